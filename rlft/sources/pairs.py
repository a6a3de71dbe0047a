"""Preference pairs from a JSONL file (offline DPO).

The file is `algorithm.path`, rows {"prompt": str, "chosen": str, "rejected": str}, read by
rlft.data.jsonl. One batch = rows_per_batch / 2 pairs (a pair is two training rows), drawn in a
seeded order that reshuffles every epoch. The algorithm's `validate` reads the file before any
role starts, so a malformed row stops the run naming its file and line; the prompt lengths,
which need the tokenizer, are checked here, when the source is built (before the first step).
"""

from __future__ import annotations

import os
from pathlib import Path

from rlft.data.collate import encode_prompt
from rlft.data.jsonl import DataError, PreferencePair, read_preference_pairs
from rlft.data.sampler import EpochSampler
from rlft.sources import SourceContext


def read_pairs(path: str | os.PathLike) -> list[tuple[str, PreferencePair]]:
    """("<path>:<line>", pair) for every row; DataError names a malformed row."""
    pairs = read_preference_pairs(path)
    with Path(path).open(encoding="utf-8") as lines:  # the non-blank lines read_preference_pairs parsed
        where = [f"{path}:{number}" for number, line in enumerate(lines, start=1) if line.strip()]
    return list(zip(where, pairs))


class PairSource:
    def __init__(self, ctx: SourceContext):
        self.ctx = ctx
        limit = ctx.cfg.train.max_length
        located = read_pairs(ctx.cfg.algorithm.path)
        for where, pair in located:  # a prompt must leave room for at least one response token
            length = len(encode_prompt(ctx.tokenizer, pair.prompt, ctx.chat))
            if length >= limit:
                raise DataError(f"{where}: prompt of {length} tokens + 1 more does not fit train.max_length ({limit})")
        self.pairs = [pair for _, pair in located]
        self.sampler = EpochSampler(len(self.pairs), ctx.cfg.run.seed)

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list[PreferencePair], dict[str, float]]:
        pairs = self.sampler.next_batch(self.pairs, self.ctx.rows_per_batch() // 2)
        return pairs, {"train/epoch": self.sampler.epoch + self.sampler.position / len(self.pairs)}
