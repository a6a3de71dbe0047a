"""Recovering from dead actors inside the loop (rlft.faults says what survives what)."""

from __future__ import annotations

import logging

from rlft.checkpoints import complete_checkpoints
from rlft.faults import LearnerFailed, is_actor_death, restart_dead

log = logging.getLogger("rlft.controller")


class FaultRecovery:
    """Mixed into the Controller: `self.cfg`, `self.roles`, `self.learners`, `self.source`,
    `self.sync`, `self.restarts` and `self.run_dir` are the controller's."""

    def recovering(self, call, *args, after: BaseException | None = None):
        """call(*args); when a generator or reward actor died on the way, replace it, give the
        generators the current policy, and call again (a source batch: from the same data position,
        so the lost batch is generated again; nothing was trained on it)."""
        draw = self.source.state() if call == self.source.next_batch else None
        for attempt in range(self.cfg.runtime.max_restarts + 1):
            if after is not None:
                self.replace_dead_actors(after)
                if draw is not None:
                    self.source.load_state(draw)
            try:
                return call(*args)
            except Exception as err:
                if not is_actor_death(err) or attempt == self.cfg.runtime.max_restarts:
                    raise
                after = err

    def replace_dead_actors(self, err: BaseException) -> None:
        if self.learners is not None and self.learners.dead_members():
            raise err  # run() explains it
        replaced = restart_dead(self.roles, ("generator", "reward"))
        if not replaced:
            raise err
        self.restarts += replaced
        log.warning("replaced %d dead actor(s) (%s); %d in this run", replaced, type(err).__name__, self.restarts)
        if self.sync is not None:
            self.sync.resync()

    def explain_learner_death(self, err: BaseException) -> LearnerFailed | None:
        """A LearnerFailed saying how to continue, when `err` is a learner rank's death."""
        if not (is_actor_death(err) and self.learners is not None and self.learners.dead_members()):
            return None
        newest = complete_checkpoints(self.run_dir)
        return LearnerFailed(
            f"a learner rank died ({type(err).__name__}); its optimizer state is lost, so the run stops. The newest "
            f"checkpoint is {newest[-1] if newest else 'none (set train.save_every to write some)'}; continue with: "
            "rlft train <recipe> [overrides] resume=auto")

