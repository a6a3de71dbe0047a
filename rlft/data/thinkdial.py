"""ThinkDial reasoning-effort modes (docs/algorithms.md#thinkdial): mode prompts and budget-mode SFT data.

A mode is signalled only by the text put before the question (`MODE_PROMPTS`, ours, with the
paper's intent: high = take all the time needed and check; medium = reasoning has a cost; low =
answer at once). Responses are `<think>` thinking `</think>` then the answer.

Budget-mode SFT (BM-SFT) rows come from full (high-mode) traces: the thinking is cut at
`MODE_RATIOS` of its length (whole lines only, so a trace never stops mid-step), a mode connective
sentence (`CONNECTIVES`, ours) closes it, the answer section is regenerated (by the task's solver,
or by a model continuing the cut trace), and only rows the task's checker accepts are kept; the
modes are then balanced to equal counts. The task that builds such rows (`arith_think`) writes
the tiny-arith set with

    python -m rlft.data.arith_think --out configs/data/thinkdial_arith_bmsft.jsonl

(`--help` for sizes, the share of low-mode rows with empty thinking, and `--policy MODEL_DIR`).
"""

from __future__ import annotations

import random
from typing import Callable

MODES = ("high", "medium", "low")
MODE_PROMPTS = {
    "high": "You have all the time you need: work it out, then check it.\n",
    "medium": "Time has a cost: work it out, but skip the checking.\n",
    "low": "Time is very short: answer at once, with no working.\n",
}
# Share of the thinking kept per mode (ThinkDial's r_high, r_med, r_low).
MODE_RATIOS = {"high": 1.0, "medium": 0.5, "low": 0.25}
# Said right before the close tag of a cut trace: why the thinking stops there.
CONNECTIVES = {"high": "", "medium": "stop here\n", "low": "hurry\n"}
OPEN_TAG, CLOSE_TAG = "<think>\n", "</think>\n"


def split_thinking(response: str, close_tag: str = CLOSE_TAG) -> tuple[str, str]:
    """(thinking, answer section) of a `<think>`...`</think>` response."""
    if not response.startswith(OPEN_TAG) or close_tag not in response:
        raise ValueError(f"response does not have the form {OPEN_TAG!r}...{close_tag!r}<answer>: {response[:60]!r}")
    thinking, answer = response[len(OPEN_TAG):].split(close_tag, 1)
    return thinking, answer


def answer_section(text: str, close_tag: str = "</think>") -> str | None:
    """The text after the first close tag (None when the thinking is never closed)."""
    at = text.find(close_tag)
    return None if at < 0 else text[at + len(close_tag):]


def cut_thinking(thinking: str, ratio: float, length: Callable[[str], int] = len) -> str:
    """The longest prefix of whole lines whose length is at most `ratio` of the thinking's length
    (`length` counts tokens; characters by default)."""
    if ratio >= 1.0:
        return thinking
    budget, kept = ratio * length(thinking), ""
    for line in thinking.splitlines(keepends=True):
        if length(kept + line) > budget:
            break
        kept += line
    return kept


def with_mode(prompt: str, mode: str, prompts: dict[str, str] | None = None) -> str:
    """The question as the model sees it in `mode`."""
    prompts = MODE_PROMPTS if prompts is None else prompts
    if mode not in prompts:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(prompts)}")
    return prompts[mode] + prompt


def cut_heads(examples, empty_low: float = 0.0, seed: int = 0,
              length: Callable[[str], int] = len) -> list[tuple[object, str, str]]:
    """(example, mode, head) for every example and mode: head = the response up to and including
    the close tag, thinking cut to the mode's ratio, with the mode's connective. `examples` carry a
    full high-mode trace as response; a share `empty_low` of the low-mode heads keep no thinking at
    all (ThinkDial adds empty-thinking low-mode samples)."""
    rng = random.Random(seed)
    heads = []
    for example in examples:
        thinking, _ = split_thinking(example.response)
        for mode in MODES:
            empty = mode == "low" and rng.random() < empty_low
            kept = "" if empty else cut_thinking(thinking, MODE_RATIOS[mode], length)
            heads.append((example, mode, OPEN_TAG + kept + CONNECTIVES[mode] + CLOSE_TAG))
    return heads


def balanced_rows(candidates, check: Callable, seed: int = 0, prompts: dict[str, str] | None = None) -> list[dict]:
    """Rows from (example, mode, response) candidates the checker accepts, the same number per mode
    (the first ones of each), shuffled. The prompt is the example's question under the mode prompt."""
    by_mode: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for example, mode, response in candidates:
        if check(example, response):
            by_mode[mode].append({"prompt": with_mode(example.meta["question"], mode, prompts), "response": response,
                                  "answer": example.answer, "meta": {**example.meta, "mode": mode}})
    count = min(len(rows) for rows in by_mode.values())
    rows = [row for mode in MODES for row in by_mode[mode][:count]]
    random.Random(seed).shuffle(rows)
    return rows


def model_answers(model_dir: str, prompts: list[str], max_new_tokens: int = 16, batch_size: int = 256) -> list[str]:
    """Greedy continuations of each prompt text by a model (the regenerated answer sections)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlft.generation import greedy_generate

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    return tokenizer.batch_decode(greedy_generate(model, tokenizer, ids, max_new_tokens, batch_size),
                                  skip_special_tokens=True)
