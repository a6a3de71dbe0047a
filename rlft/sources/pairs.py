"""Preference pairs from a JSONL file (offline DPO, reward models).

The file is `algorithm.path`, rows {"prompt": str, "chosen": str, "rejected": str}, read by
rlft.data.jsonl. One batch = rows_per_batch / 2 pairs (a pair is two training rows), drawn in a
seeded order that reshuffles every epoch. The algorithm's `validate` reads the file before the
warm start or any role, so a malformed row stops the run naming its file and line; the prompt
lengths, which need the tokenizer, are checked when the source is built (also before any role).

  pairs         every pair trains; evaluation is the family's (greedy answers on learner rank 0)
  reward_pairs  a reward model's pairs: the held-out ones (`algorithm.eval_path`, or the last
                `algorithm.eval_pairs` rows of the file: `split_pairs`) never train, and each
                evaluation scores them with learner rank 0's score head: eval/pair_accuracy
"""

from __future__ import annotations

from typing import Any

import torch

from rlft.data.collate import encode_sft, pad_rows, pad_token_id
from rlft.data.jsonl import PreferencePair, read_preference_pairs
from rlft.data.sampler import EpochSampler
from rlft.sources import SampledSource, SourceContext


class PairSource(SampledSource):
    def __init__(self, ctx: SourceContext, pairs: list[PreferencePair] | None = None):
        self.ctx = ctx
        self.pairs = read_preference_pairs(ctx.cfg.algorithm.path) if pairs is None else pairs
        ctx.check_prompts_fit(self.pairs)
        self.sampler = EpochSampler(len(self.pairs), ctx.cfg.run.seed)

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list[PreferencePair], dict[str, float]]:
        pairs = self.sampler.next_batch(self.pairs, self.ctx.rows_per_batch() // 2)
        return pairs, {"train/epoch": self.sampler.epoch + self.sampler.position / len(self.pairs)}


def read_pairs_file(key: str, path: str) -> list[PreferencePair]:
    """The pairs of `algorithm.<key>`'s file, or a ValueError naming the key when it is missing or empty."""
    try:
        pairs = read_preference_pairs(path)
    except FileNotFoundError:
        raise ValueError(f"algorithm.{key}={path}: no such file") from None
    if not pairs:
        raise ValueError(f"algorithm.{key}={path}: the file holds no pairs")
    return pairs


def split_pairs(cfg) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(training pairs, held-out pairs) of an algorithm section with `path`, `eval_path` and `eval_pairs`
    (ValueError naming the key; a DataError names a bad row's file:line)."""
    pairs = read_pairs_file("path", cfg.path)
    if cfg.eval_path is not None:
        if cfg.eval_pairs:
            raise ValueError(f"algorithm.eval_pairs={cfg.eval_pairs} and algorithm.eval_path={cfg.eval_path}: "
                             "the held-out pairs come from one of them; drop one")
        return pairs, read_pairs_file("eval_path", cfg.eval_path)
    if cfg.eval_pairs >= len(pairs):
        raise ValueError(f"algorithm.eval_pairs={cfg.eval_pairs} holds out every one of the {len(pairs)} pairs of "
                         f"{cfg.path}, leaving none to train on; lower it")
    cut = len(pairs) - cfg.eval_pairs
    return pairs[:cut], pairs[cut:]


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """eval/ metrics of scores [P] of the chosen and rejected responses: the share ranked right
    (r_w > r_l strictly: a tie is wrong), the mean margin and the mean scores."""
    margin = chosen - rejected
    return {"eval/pair_accuracy": float((margin > 0).float().mean()), "eval/reward_margin": float(margin.mean()),
            "eval/reward_chosen": float(chosen.mean()), "eval/reward_rejected": float(rejected.mean()),
            "eval/pairs": float(len(margin))}


class RewardPairSource(PairSource):
    def __init__(self, ctx: SourceContext):
        train, self.held_out = split_pairs(ctx.cfg.algorithm)
        super().__init__(ctx, train)
        ctx.check_prompts_fit(self.held_out)

    def evaluate(self, roles: dict[str, Any], examples: list, step: int, *, family, policy_version: int, samples,
                 show_progress: bool) -> dict[str, float]:
        """Learner rank 0 scores every held-out pair (`examples`, the task's, are not used): rows as in
        training (prompt + response + EOS, cut to train.max_length), eval.batch_size pairs at a time."""
        if not self.held_out:
            return {}
        ctx = self.ctx
        tok = ctx.tokenizer
        pad_id = pad_token_id(tok)
        scores = []
        for start in range(0, len(self.held_out), ctx.cfg.eval.batch_size):
            rows = [encode_sft(tok, pair.prompt, response, ctx.cfg.train.max_length, ctx.chat)
                    for pair in self.held_out[start : start + ctx.cfg.eval.batch_size]
                    for response in (pair.chosen, pair.rejected)]
            scores.append(roles["learner"].call_lead("family_call", "sequence_scores", pad_rows(rows, pad_id)))
        scores = torch.cat(scores)
        return pair_accuracy(scores[0::2], scores[1::2])
