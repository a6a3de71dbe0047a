"""Recovering from dead actors inside the loop (rlft.faults says what survives what)."""

from __future__ import annotations

import logging

from rlft.control.checkpoints import complete_checkpoints
from rlft.faults import (LearnerFailed, RoleOutOfMemory, is_actor_death, killed_member, memory_kill,
                         memory_kill_message, memory_kill_summary, restart_dead)

log = logging.getLogger("rlft.controller")


class FaultRecovery:
    """Mixed into the Controller: `self.cfg`, `self.roles`, `self.learners`, `self.source`,
    `self.sync`, `self.restarts` and `self.run_dir` are the controller's."""

    def recovering(self, call, *args, after: BaseException | None = None):
        """call(*args); when a generator, reward or environment actor died on the way (or was killed for
        memory), replace it, give the generators the current policy, and call again (a source batch: from
        the same data position, so the lost batch is generated again; nothing was trained on it)."""
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
        kill = memory_kill(err)
        if kill is not None:  # named now: the restart gives the member a new pid
            log.warning("%s", memory_kill_summary(kill, killed_member(self.roles, kill)))
        replaced = restart_dead(self.roles, ("generator", "reward", "environment"))
        if not replaced:
            raise err
        self.restarts += replaced
        log.warning("replaced %d dead actor(s) (%s); %d in this run", replaced, type(err).__name__, self.restarts)
        if self.sync is not None:
            self.sync.resync()

    def explain_fault(self, err: BaseException) -> RuntimeError | None:
        """The error that says what stopped the run and how to continue, when `err` is a role killed for
        memory (RoleOutOfMemory) or a learner rank's death (LearnerFailed)."""
        kill = memory_kill(err)
        if kill is not None:
            member = killed_member(self.roles, kill)
            return RoleOutOfMemory(memory_kill_message(kill, member, self.cfg, self.newest_checkpoint()))
        if not (is_actor_death(err) and self.learners is not None and self.learners.dead_members()):
            return None
        return LearnerFailed(
            f"a learner rank died ({type(err).__name__}); its optimizer state is lost, so the run stops. The newest "
            f"checkpoint is {self.newest_checkpoint()}; continue with: rlft train <recipe> [overrides] resume=auto")

    def newest_checkpoint(self) -> str:
        newest = complete_checkpoints(self.run_dir)
        return str(newest[-1]) if newest else "none (set train.save_every to write some)"

