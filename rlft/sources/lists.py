"""Ranked lists from a JSONL file (offline preference ranking, e.g. tree preference optimization).

The file is `algorithm.path`, rows {"prompt": str, "responses": [str, ...], "scores": [number, ...]}
(higher is better, ties allowed), read by rlft.data.jsonl. One batch = rows_per_batch /
samples_per_prompt lists (samples_per_prompt is the algorithm's list size), drawn in a seeded
order that reshuffles every epoch. The algorithm's `validate` reads the file first, so a bad row
stops the run, naming its file and line, before any role starts.
"""

from __future__ import annotations

import os

from rlft.data.jsonl import DataError, RankedList, read_ranked_lists
from rlft.data.sampler import EpochSampler
from rlft.sources import SampledSource, SourceContext


def read_lists(path: str | os.PathLike, max_size: int) -> list[RankedList]:
    """Every row; DataError names a malformed row or one over max_size responses by its file:line."""
    lists = read_ranked_lists(path)
    for item in lists:
        if len(item.responses) > max_size:
            raise DataError(f"{item.source}: {len(item.responses)} responses, more than algorithm.list_size={max_size}")
    return lists


class ListSource(SampledSource):
    def __init__(self, ctx: SourceContext):
        self.ctx = ctx
        size = ctx.spec.samples_per_prompt(ctx.cfg)
        self.lists = read_lists(ctx.cfg.algorithm.path, size)
        ctx.check_prompts_fit(self.lists)
        self.per_batch = ctx.rows_per_batch() // size
        self.sampler = EpochSampler(len(self.lists), ctx.cfg.run.seed)

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list[RankedList], dict[str, float]]:
        return self.sampler.next_batch(self.lists, self.per_batch), {}
