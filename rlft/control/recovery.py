"""Recovering from dead actors inside the loop (rlft.faults says what survives what).

`Recovery` is built by the controller's set-up once the roles and the weight sync exist; the loop
makes its remote calls through `recovering`. `explain_fault` turns the error that stops a run into
one that says what stopped it and how to continue; it needs nothing but its arguments, so it also
explains a failure during set-up.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rlft.control.checkpoints import complete_checkpoints
from rlft.faults import (LearnerFailed, RoleOutOfMemory, is_actor_death, killed_member, memory_kill,
                         memory_kill_message, memory_kill_summary, restart_dead)

log = logging.getLogger("rlft.controller")  # the controller's parts log as the controller


class Recovery:
    """Replaces dead generator, reward, environment and teacher actors (none holds state but the policy).
    `roles` is the controller's own dict of groups (a replaced member lives on inside its group); `sync`
    (None without generators) gives new generators the current policy."""

    def __init__(self, cfg, roles: dict, sync=None):
        self.cfg, self.roles, self.sync = cfg, roles, sync
        self.restarts = 0  # generator, reward, environment and teacher actors replaced after their process died

    def recovering(self, call, *args, after: BaseException | None = None, source=None):
        """call(*args); when a generator, reward, environment or teacher actor died on the way (or was killed for
        memory), replace it, give the generators the current policy, and call again. With `source`,
        `call` draws a batch of that source: each retry starts from the same data position, so the lost
        batch is generated again (nothing was trained on it)."""
        draw = source.state() if source is not None else None
        for attempt in range(self.cfg.runtime.max_restarts + 1):
            if after is not None:
                self.replace_dead_actors(after)
                if draw is not None:
                    source.load_state(draw)
            try:
                return call(*args)
            except Exception as err:
                if not is_actor_death(err) or attempt == self.cfg.runtime.max_restarts:
                    raise
                after = err

    def replace_dead_actors(self, err: BaseException) -> None:
        if dead_rank_group(self.cfg, self.roles) is not None:
            raise err  # run() explains it
        kill = memory_kill(err)
        if kill is not None:  # named now: the restart gives the member a new pid
            log.warning("%s", memory_kill_summary(kill, killed_member(self.roles, kill)))
        replaced = restart_dead(self.roles, ("generator", "reward", "environment", "teacher"))
        if not replaced:
            raise err
        self.restarts += replaced
        log.warning("replaced %d dead actor(s) (%s); %d in this run", replaced, type(err).__name__, self.restarts)
        if self.sync is not None:
            self.sync.resync()


def explain_fault(err: BaseException, cfg, roles: dict, run_dir: Path) -> RuntimeError | None:
    """The error that says what stopped the run and how to continue, when `err` is a role killed for
    memory (RoleOutOfMemory) or a learner rank's death (LearnerFailed)."""
    kill = memory_kill(err)
    if kill is not None:
        member = killed_member(roles, kill)
        return RoleOutOfMemory(memory_kill_message(kill, member, cfg, newest_checkpoint(run_dir)))
    kind = dead_rank_group(cfg, roles) if is_actor_death(err) else None
    if kind is None:
        return None
    return LearnerFailed(
        f"a {kind} rank died ({type(err).__name__}); its optimizer state is lost, so the run stops. The newest "
        f"checkpoint is {newest_checkpoint(run_dir)}; continue with: rlft train <recipe> [overrides] resume=auto")


def dead_rank_group(cfg, roles: dict) -> str | None:
    """The kind of a group of learner ranks (the learners, or the algorithm's companion groups, e.g. a
    critic) with a dead member, if any: such a group cannot be rebuilt without its optimizer state."""
    from rlft.algorithms import ALGORITHMS

    companions = [c.kind for c in ALGORITHMS[cfg.algorithm.name].companions] if cfg is not None else []
    for kind in ("learner", *companions):
        group = roles.get(kind)
        if group is not None and group.dead_members():
            return kind
    return None


def newest_checkpoint(run_dir: Path) -> str:
    newest = complete_checkpoints(run_dir)
    return str(newest[-1]) if newest else "none (set train.save_every to write some)"
