"""Ranked lists for arith prompts: the worked trace and other responses, scored by the step checker.

    python -m rlft.data.arith_lists --out lists.jsonl --lists 1024 --start 352 [--policy MODEL_DIR]

writes one row {"prompt", "responses", "scores"} per train problem [start, start + lists) of the
arith task (default config: 2 digits, seed 0, so never a held-out pair). A list holds the worked
trace first and size - 1 more responses, made one of two ways:

* branches (`--policy MODEL_DIR`, the TPO paper's construction, docs/algorithms.md#tpo): cut the worked trace
  after a random number of its lines (never all of them) and let the model continue from there,
  sampled at `--temperature`; the lists are trees of depth one rooted at the worked trace's
  prefixes, and the branches carry the model's own errors;
* corruptions (no model): one slip in one random column, carried through the later columns and
  the answer as a model would (`--local-slips`: nothing after the slip changes):
    sum     the column's sum is off by one;
    carry   the incoming carry is dropped, or a carry that is not there is added;
    answer  every column is right but the answer line is off by a power of ten.

Each response is scored by the mean of the task's per-step checker (the `steps` reward): the
worked trace gets 1.0, another response the share of its column lines and answer that are right;
equal scores are ties. Corruptions are reproducible from the seed alone; branches also depend on
the model (and on torch's sampler).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rlft.data.arith import ArithConfig, ArithTask, column_digits, format_step
from rlft.types import Example

KINDS = ("sum", "carry", "answer")


def corrupted_trace(a: int, b: int, kind: str, column: int, rng: random.Random, propagate: bool = True) -> str:
    """The trace of a + b with one slip of `kind` at `column`; propagate: the later columns and the
    answer follow from the slipped line, else they stay as in the worked trace."""
    lines, digits, carry = [], [], 0
    for i, (digit_a, digit_b) in enumerate(column_digits(a, b)):
        true_total = digit_a + digit_b + carry
        if kind == "carry" and i == column:
            carry = 1 - carry
        total = digit_a + digit_b + carry
        if kind == "sum" and i == column:
            total += 1 if total == 0 else -1 if total == 19 else rng.choice((-1, 1))
        lines.append(format_step(digit_a, digit_b, carry, total))
        total = total if propagate else true_total
        digits.append(total % 10)
        carry = total // 10
    answer = int("".join(str(d) for d in ([carry] if carry else []) + digits[::-1]))
    if kind == "answer":
        power = 10 ** rng.randrange(len(str(answer)))
        answer = answer + power if answer < power or rng.random() < 0.5 else answer - power
    return "\n".join(lines + [f"A: {answer}"])


def corruptions(example: Example, count: int, rng: random.Random, propagate: bool = True) -> list[str]:
    """`count` distinct corrupted traces, none equal to the worked one."""
    a, b = example.meta["a"], example.meta["b"]
    found: list[str] = []
    while len(found) < count:
        kind = rng.choice(KINDS)
        trace = corrupted_trace(a, b, kind, rng.randrange(len(column_digits(a, b))), rng, propagate)
        if trace not in found and trace != example.response:
            found.append(trace)
    return found


def branch_prefixes(example: Example, count: int, rng: random.Random) -> list[str]:
    """`count` prefixes of the worked trace: its first k lines, k uniform in [0, lines)."""
    lines = example.response.split("\n")
    prefixes = []
    for _ in range(count):
        k = rng.randrange(len(lines))
        prefixes.append("".join(line + "\n" for line in lines[:k]))
    return prefixes


def sample_continuations(model_dir: str, prompts: list[str], seed: int, temperature: float,
                         max_new_tokens: int = 32, batch_size: int = 512) -> list[str]:
    """One sampled continuation (text, up to EOS) of every prompt text; left-padded batches."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    torch.manual_seed(seed)
    texts = []
    for start in range(0, len(prompts), batch_size):
        chunk = [tokenizer(p)["input_ids"] for p in prompts[start:start + batch_size]]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                 top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
        for row in out[:, width:].tolist():
            texts.append(tokenizer.decode(row[: row.index(eos)] if eos in row else row))
    return texts


def score(task: ArithTask, example: Example, response: str) -> float:
    steps = task.step_scores(example, response)
    return round(sum(steps) / len(steps), 4)


def build_lists(lists: int, size: int, start: int = 0, seed: int = 0, digits: int = 2, propagate: bool = True,
                policy: str | None = None, temperature: float = 1.0) -> list[dict]:
    task = ArithTask(ArithConfig(digits=digits, train_size=start + lists))
    examples = task.split("train")[start:]
    rng = random.Random(seed)
    if policy is None:
        others = [corruptions(example, size - 1, rng, propagate) for example in examples]
    else:
        prefixes = [branch_prefixes(example, size - 1, rng) for example in examples]
        flat = [ex.prompt + p for ex, group in zip(examples, prefixes) for p in group]
        continuations = iter(sample_continuations(policy, flat, seed, temperature))
        others = [[p + next(continuations) for p in group] for group in prefixes]
    return [{"prompt": ex.prompt, "responses": [ex.response] + rest,
             "scores": [score(task, ex, r) for r in [ex.response] + rest]} for ex, rest in zip(examples, others)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSONL file to write")
    parser.add_argument("--lists", type=int, default=1024, help="number of lists (train problems)")
    parser.add_argument("--size", type=int, default=4, help="responses per list (the worked one + others)")
    parser.add_argument("--start", type=int, default=0, help="first train problem (e.g. past a warm start's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions, cut points and sampling")
    parser.add_argument("--digits", type=int, default=2, help="operand digits (the task's `digits`)")
    parser.add_argument("--policy", help="HF model folder that continues the worked trace's prefixes (branches)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the branches")
    parser.add_argument("--local-slips", action="store_true",
                        help="corruptions: a slipped line changes nothing after it")
    args = parser.parse_args(argv)
    rows = build_lists(args.lists, args.size, args.start, args.seed, args.digits, not args.local_slips,
                       args.policy, args.temperature)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} lists of {args.size} to {out}")


if __name__ == "__main__":
    main()
