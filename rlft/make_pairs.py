"""Preference pairs sampled from a recipe's base model and judged by its task's checker (offline DPO data).

    python -m rlft.make_pairs configs/dpo_offline_tiny_arith.yaml

loads the recipe, takes its base model (the warm start's final checkpoint, run first if missing;
else model.name), and samples `--samples` completions (temperature `--temperature`) for each of
`--prompts` distinct train prompts, skipping the first `--start`. The task's answer checker splits
each group into correct and incorrect completions; every prompt with both gives one row
{"prompt", "chosen": a correct completion, "rejected": an incorrect one} (picked at random,
seeded), or up to `--pairs-per-prompt` rows of distinct (correct, wrong) texts, written to the
recipe's `algorithm.path` (or `--out`). Prompts whose samples are all
correct or all wrong give no pair. Sampling uses transformers on the CPU, one process.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from rlft.data.collate import pad_token_id


@torch.no_grad()
def sample(model, tokenizer, prompts: list[list[int]], n: int, max_new_tokens: int, temperature: float,
           batch_size: int = 64) -> list[list[str]]:
    """n sampled completions (text, cut before EOS) per tokenised prompt; prompts are left-padded."""
    pad_id = pad_token_id(tokenizer)
    out: list[list[str]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        generated = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                   top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, num_return_sequences=n,
                                   pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        out += [texts[i : i + n] for i in range(0, len(texts), n)]
    return out


def preference_rows(examples, completions: list[list[str]], score, rng: random.Random,
                    per_prompt: int = 1) -> list[dict]:
    """{"prompt", "chosen", "rejected"} rows for each example with both a correct and an incorrect
    completion: one (a random correct, a random wrong), or with per_prompt > 1 up to that many distinct
    (correct text, wrong text) pairs drawn without replacement."""
    rows = []
    for example, texts in zip(examples, completions):
        verdicts = [score(example, t) >= 1.0 for t in texts]
        good = [t for t, ok in zip(texts, verdicts) if ok]
        bad = [t for t, ok in zip(texts, verdicts) if not ok]
        if not (good and bad):
            continue
        if per_prompt == 1:
            rows.append({"prompt": example.prompt, "chosen": rng.choice(good), "rejected": rng.choice(bad)})
            continue
        grid = [(g, b) for g in dict.fromkeys(good) for b in dict.fromkeys(bad)]
        for g, b in rng.sample(grid, min(per_prompt, len(grid))):
            rows.append({"prompt": example.prompt, "chosen": g, "rejected": b})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="the offline DPO recipe (its base model, task and algorithm.path)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the recipe")
    parser.add_argument("--out", help="JSONL file to write (default: the recipe's algorithm.path)")
    parser.add_argument("--prompts", type=int, default=2000, help="distinct train prompts to sample")
    parser.add_argument("--start", type=int, default=0, help="skip the first distinct train prompts")
    parser.add_argument("--samples", type=int, default=8, help="completions per prompt")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs-per-prompt", type=int, default=1,
                        help="up to this many distinct (correct, wrong) pairs per prompt (reward-model data)")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlft.config import load_config
    from rlft.control import train  # a command: above the control layer (docs/architecture.md)
    from rlft.control.warm_start import base_model_path
    from rlft.data.collate import encode_prompt, uses_chat_template
    from rlft.data.tasks import build_task

    cfg = load_config(args.config, args.overrides)
    model_path = base_model_path(cfg, train=train)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    chat = uses_chat_template(tokenizer, cfg.data.chat_template)
    task = build_task(cfg.task)
    distinct = list({ex.prompt: ex for ex in task.split("train")}.values())[args.start : args.start + args.prompts]
    torch.manual_seed(args.seed)
    completions = sample(model, tokenizer, [encode_prompt(tokenizer, ex.prompt, chat) for ex in distinct],
                         args.samples, args.max_new_tokens, args.temperature)
    if args.pairs_per_prompt < 1:
        parser.error(f"--pairs-per-prompt={args.pairs_per_prompt}: give 1 or more")
    rows = preference_rows(distinct, completions, task.score, random.Random(args.seed), args.pairs_per_prompt)
    correct = sum(task.score(ex, t) >= 1.0 for ex, texts in zip(distinct, completions) for t in texts)
    out = Path(args.out or cfg.algorithm.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"base model {model_path}: {correct / (len(distinct) * args.samples):.3f} of "
          f"{len(distinct)} x {args.samples} samples correct; wrote {len(rows)} pairs to {out}")


if __name__ == "__main__":
    main()
