"""GPPO on multi-turn retrieval episodes: IM-RAG's questioner and answerer (docs/algorithms.md#im-rag-episodes).

The policy writes the turns; the environment role inserts the documents as observation tokens,
which carry no loss (rlft.rollouts.rollout_row). With process_coef the retrieval_progress turn
rewards P_t - P_{t-1} give each search turn its own advantage (docs/algorithms.md#coverage-reward).

The answer turn is trained one of two ways (`answerer`):

* sft (IM-RAG): the questioner's turns get the policy gradient; in an episode that answered and
  whose documents contain the gold answer, the sampled answer after "<answer>" is replaced by the
  gold one, "gold</answer>", trained by NLL after the episode's own searches and documents (the
  paper's Answerer SFT on (question, IM turns, gold answer)). Two choices keep the answerer from
  undoing the questioner: the opening "<answer>" stays sampled and under the policy gradient
  (when to stop searching is the questioner's decision; SFT would teach answering after however
  few searches the episode made), and episodes whose documents miss the answer teach nothing
  (a gold answer absent from the context teaches the model not to copy from the documents, the
  very skill its next queries need). The term is answer_sft_coef times the gold tokens' summed
  NLL over the step's token count, so a gold token weighs what a policy-gradient token with
  |A| = 1 weighs.
* rl: the sampled answer is one more turn under the policy gradient.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import torch
from pydantic import Field

from rlft.algorithms.base import PolicyModel, RowContext, StepCounts
from rlft.algorithms.gppo import SPEC, GPPOConfig, build_rows, policy_loss, validate
from rlft.rollouts import pad_rollout_rows
from rlft.types import Rollout


class GPPOEpisodesConfig(GPPOConfig):
    name: Literal["gppo_episodes"] = "gppo_episodes"
    answerer: Literal["sft", "rl"] = Field(
        "sft", description="How the answer turn is trained: sft (IM-RAG: NLL of the gold answer after the "
        "episode's own searches; the policy gradient on the search turns and the decision to answer) or rl (the sampled answer is "
        "trained by the policy gradient like the search turns).")
    answer_sft_coef: float = Field(1.0, ge=0.0, description="Weight of the answerer's NLL (answerer: sft).")


def answer_in_documents(rollout: Rollout) -> bool:
    """Whether the gold answer occurs (as whole words, after SQuAD normalisation) in the documents
    the episode retrieved."""
    from rlft.retrieval.episode import DOC_SEPARATOR, DOCS_CLOSE, DOCS_OPEN, normalize_answer

    text = " ".join(s.text for s in rollout.segments if s.kind == "observation")
    for markup in (DOCS_OPEN, DOCS_CLOSE, DOC_SEPARATOR):  # before normalising, which would glue words to tags
        text = text.replace(markup, " ")
    documents = normalize_answer(text)
    gold = normalize_answer(rollout.example.answer or "")
    return bool(gold) and f" {gold} " in f" {documents} "


def answer_start(rollout: Rollout, decode) -> tuple[int, str] | None:
    """Where the gold answer goes in an episode that answered from documents holding it: (completion
    offset after the sampled tokens that lie within the answer turn's text up to the end of
    "<answer>", the rest of that opening tag the gold tokens must repeat: "" unless a token
    straddles the tag's end). None for any other episode."""
    from rlft.retrieval.episode import ANSWER_OPEN

    if rollout.finish_reason != "answer" or not rollout.segments or rollout.segments[-1].kind != "turn":
        return None
    if not answer_in_documents(rollout):
        return None
    turn = rollout.segments[-1]
    ids = rollout.completion_ids[turn.start:turn.end]
    text = decode(ids)
    tag_end = text.find(ANSWER_OPEN)
    if tag_end < 0:
        return None
    tag_end += len(ANSWER_OPEN)
    keep = 0
    while keep < len(ids) and len(decode(ids[:keep + 1])) <= tag_end:
        keep += 1
    return turn.start + keep, text[len(decode(ids[:keep])):tag_end]


def with_gold_answer(row: dict[str, Any], prompt_length: int, start: int, gold_ids: list[int],
                     max_length: int) -> dict[str, Any]:
    """The row cut at completion offset `start` and ended by the gold answer tokens: labelled, no
    policy advantage, marked in `answer_sft` (on shifted positions, like advantages). Unchanged,
    with an all-zero `answer_sft`, when the gold answer would not fit."""
    keep = prompt_length + start
    if keep >= len(row["input_ids"]) or keep + len(gold_ids) > max_length:
        return {**row, "answer_sft": [0.0] * (len(row["input_ids"]) - 1)}
    return {
        **row,
        "input_ids": row["input_ids"][:keep] + gold_ids,
        "labels": row["labels"][:keep] + gold_ids,
        "old_logprobs": row["old_logprobs"][:keep - 1] + [0.0] * len(gold_ids),
        "advantages": row["advantages"][:keep - 1] + [0.0] * len(gold_ids),
        "answer_sft": [0.0] * (keep - 1) + [1.0] * len(gold_ids),
    }


def build_episode_rows(rollouts: list[Rollout], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    rows, metrics = build_rows(rollouts, ctx)
    if ctx.algorithm.answerer != "sft":
        return rows, metrics
    from rlft.retrieval.episode import ANSWER_CLOSE

    def decode(ids: list[int]) -> str:
        return ctx.tokenizer.decode(ids, skip_special_tokens=False)

    out, answered = [], 0
    for rollout, row in zip(rollouts, rows):
        found = answer_start(rollout, decode)
        kept = any(label >= 0 for label in row["labels"])  # fillers (dropped groups) carry no loss at all
        if found is None or not kept:
            out.append({**row, "answer_sft": [0.0] * (len(row["input_ids"]) - 1)})
            continue
        start, tag_rest = found
        gold_ids = ctx.tokenizer(tag_rest + rollout.example.answer + ANSWER_CLOSE, add_special_tokens=False)["input_ids"]
        out.append(with_gold_answer(row, len(rollout.prompt_ids), start, gold_ids, ctx.max_length))
        answered += 1
    return out, {**metrics, "rollout/answer_sft_fraction": answered / len(rollouts)}


def pad_episode_rows(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    batch = pad_rollout_rows(rows, pad_id)
    if "answer_sft" in rows[0]:
        width = batch["input_ids"].shape[1] - 1
        batch["answer_sft"] = torch.tensor([r["answer_sft"] + [0.0] * (width - len(r["answer_sft"])) for r in rows],
                                           dtype=torch.float32)
    return batch


def answer_nll_sum(logprobs: torch.Tensor, mask: torch.Tensor, answer_sft: torch.Tensor) -> torch.Tensor:
    """Summed NLL of the gold answer tokens."""
    return -(logprobs * mask * answer_sft.to(logprobs.dtype)).sum()


def micro_batch_loss(model: PolicyModel, batch: dict[str, torch.Tensor], cfg: GPPOEpisodesConfig,
                     counts: StepCounts) -> tuple[torch.Tensor, dict[str, float]]:
    # the gold answer's tokens were written, not sampled: no behaviour weight or mismatch there
    loss, metrics, logprobs, mask = policy_loss(model, batch, cfg, counts, unsampled=batch.get("answer_sft"))
    if "answer_sft" in batch and cfg.answerer == "sft":
        nll = answer_nll_sum(logprobs, mask, batch["answer_sft"])
        loss = loss + cfg.answer_sft_coef * nll / counts.num_tokens
        metrics = {**metrics, "answer_nll_sum": float(nll.detach()),
                   "answer_tokens": float((mask * batch["answer_sft"].to(mask.dtype)).sum())}
    return loss, metrics


def log_metrics(sums: dict[str, float], steps: int) -> dict[str, float]:
    out = SPEC.log_metrics(sums, steps)
    if sums.get("answer_tokens"):
        out["train/answer_nll"] = sums["answer_nll_sum"] / sums["answer_tokens"]
    return out


EPISODES_SPEC = dataclasses.replace(
    SPEC, name="gppo_episodes", config_cls=GPPOEpisodesConfig, source="episodes",
    roles=("generator", "reward", "environment"), validate=functools.partial(validate, segments_from_turns=True),
    micro_batch_loss=micro_batch_loss, build_rows=build_episode_rows, pad=pad_episode_rows, log_metrics=log_metrics,
    summary="GPPO on multi-turn retrieval episodes (IM-RAG questioner; answerer by SFT on the gold answer)",
)
