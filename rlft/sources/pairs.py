"""Preference pairs from a JSONL file (offline DPO).

The file is `algorithm.path`, rows {"prompt": str, "chosen": str, "rejected": str}, read by
rlft.data.jsonl. One batch = rows_per_batch / 2 pairs (a pair is two training rows), drawn in a
seeded order that reshuffles every epoch. The algorithm's `validate` reads the file before the
warm start or any role, so a malformed row stops the run naming its file and line; the prompt
lengths, which need the tokenizer, are checked when the source is built (also before any role).
"""

from __future__ import annotations

from rlft.data.jsonl import PreferencePair, read_preference_pairs
from rlft.data.sampler import EpochSampler
from rlft.sources import SampledSource, SourceContext


class PairSource(SampledSource):
    def __init__(self, ctx: SourceContext):
        self.ctx = ctx
        self.pairs = read_preference_pairs(ctx.cfg.algorithm.path)
        ctx.check_prompts_fit(self.pairs)
        self.sampler = EpochSampler(len(self.pairs), ctx.cfg.run.seed)

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list[PreferencePair], dict[str, float]]:
        pairs = self.sampler.next_batch(self.pairs, self.ctx.rows_per_batch() // 2)
        return pairs, {"train/epoch": self.sampler.epoch + self.sampler.position / len(self.pairs)}
