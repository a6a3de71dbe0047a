"""Ranked lists from a JSONL file (offline preference ranking, e.g. tree preference optimization).

The file is `algorithm.path`, rows {"prompt": str, "responses": [str, ...], "scores": [number, ...]}
(higher is better, ties allowed), read by rlft.data.jsonl. One batch = rows_per_batch /
samples_per_prompt lists (samples_per_prompt is the algorithm's list size), drawn in a seeded
order that reshuffles every epoch. The algorithm's `validate` reads the file first, so a bad row
stops the run, naming its file and line, before any role starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from rlft.data.collate import encode_prompt
from rlft.data.jsonl import DataError, RankedList, read_ranked_lists
from rlft.data.sampler import EpochSampler
from rlft.sources import SourceContext


def read_lists(path: str | os.PathLike, max_size: int) -> list[tuple[str, RankedList]]:
    """("<path>:<line>", list) for every row; DataError for a malformed row or one over max_size responses."""
    lists = read_ranked_lists(path)
    with Path(path).open(encoding="utf-8") as lines:  # the same non-blank lines read_ranked_lists parsed
        where = [f"{path}:{number}" for number, line in enumerate(lines, start=1) if line.strip()]
    for location, item in zip(where, lists):
        if len(item.responses) > max_size:
            raise DataError(f"{location}: {len(item.responses)} responses, more than algorithm.list_size={max_size}")
    return list(zip(where, lists))


class ListSource:
    def __init__(self, ctx: SourceContext):
        self.ctx = ctx
        size = ctx.spec.samples_per_prompt(ctx.cfg)
        located = read_lists(ctx.cfg.algorithm.path, size)
        limit = ctx.cfg.train.max_length
        for where, item in located:  # a prompt must leave room for at least one response token
            length = len(encode_prompt(ctx.tokenizer, item.prompt, ctx.chat))
            if length >= limit:
                raise DataError(f"{where}: prompt of {length} tokens + 1 more does not fit train.max_length ({limit})")
        self.lists = [item for _, item in located]
        self.per_batch = ctx.rows_per_batch() // size
        self.sampler = EpochSampler(len(self.lists), ctx.cfg.run.seed)

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list[RankedList], dict[str, float]]:
        return self.sampler.next_batch(self.lists, self.per_batch), {}
