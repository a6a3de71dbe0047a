"""Seeded, resumable order over a dataset: a fresh permutation every epoch."""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

T = TypeVar("T")


class EpochSampler:
    """Draws batches without replacement; the state (epoch, position) is enough to resume."""

    def __init__(self, size: int, seed: int, epoch: int = 0, position: int = 0):
        if size <= 0:
            raise ValueError("cannot sample batches from an empty dataset")
        self.size, self.seed, self.epoch, self.position = size, seed, epoch, position
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_indices(self, count: int) -> list[int]:
        picked: list[int] = []
        while len(picked) < count:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(count - len(picked), self.size - self.position)
            picked += self._order[self.position : self.position + take]
            self.position += take
        return picked

    def next_batch(self, items: Sequence[T], count: int) -> list[T]:
        return [items[i] for i in self.next_indices(count)]

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
