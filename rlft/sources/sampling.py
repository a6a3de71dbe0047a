"""In-learner sampling (DRAKES): the learners draw their own samples inside the loss, so a batch is
only the seeds of those draws. Seeds follow from the run seed and the iteration alone, so a
resumed run or a batch made again draws exactly the same noise."""

from __future__ import annotations

from rlft.sources import SourceContext

SEED_STRIDE = 1_000_003  # iterations' seed ranges never overlap for batches under a million rows


class SamplingSource:
    def __init__(self, ctx: SourceContext):
        self.ctx = ctx

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list[dict], dict[str, float]]:
        base = self.ctx.cfg.run.seed * 7_919 + iteration * SEED_STRIDE
        return [{"seed": base + i} for i in range(self.ctx.rows_per_batch())], {}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        return None
