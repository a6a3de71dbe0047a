"""Batches generated ahead of training (rollout.max_staleness = k >= 1; docs/design.md#asynchronous-training).

When the learners take batch i (the policy at version v), batches i + 1 .. i + k are handed to one
background thread, which samples them in order. Batch j is trained at version v + (j - i), so none is
trained more than k versions after the policy that began sampling it: the staleness bound is kept by
when batches are admitted, not by throwing samples away. A batch found staler when it is taken (a
checkpoint written by another run, a regenerated batch) is dropped, counted and sampled again.

Weight updates and sampling share the generators in one of two ways:
* between batches (rollout.in_flight_updates false): an update waits until the batch in generation is
  done, and the next batch waits for a pending update (`update_turn`): every response is one version's;
* in flight (true): the update goes to the generators beside their sampling; they pause their
  scheduler between two steps, load, resume (rlft.roles.engine_steps).

The batches ahead are part of a step checkpoint (`finished`, `restore`), so a resumed run trains on
what the stopped one had sampled. A batch whose generation met a dead actor is sampled again, from the
source's state before it, by the current policy (the ones after it too).
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from rlft.faults import is_actor_death
from rlft.rollouts import batch_staleness


@dataclass
class Ahead:
    iteration: int
    batch: Future               # (items, metrics)
    source_state: dict | None = None  # the source before it drew this batch's prompts (set when it starts)


class BatchesAhead:
    def __init__(self, source, staleness: int, last_iteration: int, in_flight: bool):
        self.source, self.staleness, self.last, self.in_flight = source, staleness, last_iteration, in_flight
        self.pending: deque[Ahead] = deque()
        self.next_iteration = 0  # the first iteration not handed out yet
        self.dropped = 0
        self._executor: ThreadPoolExecutor | None = None
        self._turn = threading.Condition()
        self._generating = False
        self._updates_waiting = 0

    def take(self, iteration: int, policy_version: int, generate_now: Callable) -> tuple[list, dict]:
        """Batch `iteration`: generated ahead, else now by `generate_now(iteration, error)` (in the caller's
        thread, through the controller's recovery; `error`: what made the batch ahead fail, if one did).
        Then batches up to iteration + k are handed to the background thread."""
        ahead = self.pending[0] if self.pending and self.pending[0].iteration == iteration else None
        items = metrics = None
        if ahead is not None:
            try:
                items, metrics = ahead.batch.result()
            except Exception as err:
                if not is_actor_death(err):
                    raise
                self._give_up_all()  # sampled again now, once the dead actors are replaced
                items, metrics = generate_now(iteration, err)
            else:
                stale = batch_staleness(items, policy_version)
                if stale is not None and stale > self.staleness:
                    self.dropped += 1
                    self._give_up_all()
                    items = None
                else:
                    self.pending.popleft()
        if items is None:
            items, metrics = generate_now(iteration, None)
        self.next_iteration = max(self.next_iteration, iteration + 1)
        for j in range(self.next_iteration, min(iteration + self.staleness, self.last) + 1):
            self._submit(j, trained_at=policy_version + (j - iteration))
        return items, metrics

    def _give_up_all(self) -> None:
        """A batch ahead met a dead actor, or came too late: every batch ahead is given up, and the source goes
        back to before the oldest (whose iteration is sampled again, by the current policy)."""
        self.settle()
        if self.pending[0].source_state is not None:
            self.source.load_state(self.pending[0].source_state)
        self.next_iteration = self.pending[0].iteration
        self.pending.clear()

    def _submit(self, iteration: int, trained_at: int) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlft-ahead")
        ahead = Ahead(iteration, None)  # type: ignore[arg-type]
        ahead.batch = self._executor.submit(self._generate, ahead, trained_at)
        self.pending.append(ahead)
        self.next_iteration = iteration + 1

    def _generate(self, ahead: Ahead, trained_at: int):
        with self._generation_turn():
            ahead.source_state = self.source.state()  # the batches before it drew their prompts (one thread, in order)
            return self.source.next_batch(ahead.iteration, trained_at)

    # ----------------------------------------------------------------- sharing the generators
    @contextmanager
    def _generation_turn(self):
        if self.in_flight:
            yield
            return
        with self._turn:
            self._turn.wait_for(lambda: not self._updates_waiting)
            self._generating = True
        try:
            yield
        finally:
            with self._turn:
                self._generating = False
                self._turn.notify_all()

    @contextmanager
    def update_turn(self):
        """Hold the generators for a weight update: in-flight updates go beside sampling; else the update waits
        for the batch in generation, and the next batch for the update."""
        if self.in_flight:
            yield
            return
        with self._turn:
            self._updates_waiting += 1
            self._turn.wait_for(lambda: not self._generating)
        try:
            yield
        finally:
            with self._turn:
                self._updates_waiting -= 1
                self._turn.notify_all()

    # ----------------------------------------------------------------- settling, checkpoints, the end
    def settle(self) -> None:
        """Wait until every batch handed out is generated (the generators are then free)."""
        if self.pending:
            wait([ahead.batch for ahead in self.pending])

    def finished(self) -> list[tuple[list, dict]]:
        """Every batch ahead, generated (for a step checkpoint); raises what a failed one raised."""
        self.settle()
        return [ahead.batch.result() for ahead in self.pending]

    def restore(self, first_iteration: int, batches: list[tuple[list, dict]]) -> None:
        """Batches a step checkpoint held, for iterations first_iteration, first_iteration + 1, ..."""
        for offset, batch in enumerate(batches):
            done: Future = Future()
            done.set_result(batch)
            self.pending.append(Ahead(first_iteration + offset, done))
        self.next_iteration = first_iteration + len(batches)

    def close(self) -> None:
        if self._executor is not None:  # a batch still in generation ends before its roles do
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self.pending.clear()
