"""Examples of the task's train split, in a seeded order that reshuffles every epoch. No generators:
evaluation is learner rank 0's (`Source.evaluate`)."""

from __future__ import annotations

from rlft.data.sampler import EpochSampler
from rlft.sources import SampledSource, SourceContext


class DatasetSource(SampledSource):
    def __init__(self, ctx: SourceContext):
        self.ctx = ctx
        self.sampler = EpochSampler(len(ctx.train_examples), ctx.cfg.run.seed)

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list, dict[str, float]]:
        return self.sampler.next_batch(self.ctx.train_examples, self.ctx.rows_per_batch()), {}
