"""Surviving faults (remote modes): dead generators and reward actors come back, a dead learner
stops the run with its checkpoint intact, and a hang becomes an error with stack dumps.

* A generator or reward actor whose process died is replaced by a new actor built from the same
  arguments; the generators then get the current policy again (every change since the base
  model, fingerprinted and probed like any sync), and the batch that was lost is generated again
  from the same prompts and seeds. Nothing was trained on it, so nothing is trained on twice.
  Each replacement counts in `faults/restarts`.
* A learner rank that dies takes its optimizer state with it: the run stops (LearnerFailed) with
  the newest checkpoint untouched and a message that says how to continue.
* Every remote call waits at most `runtime.call_timeout_s`. Each actor registers Python's
  faulthandler on SIGUSR1 when it starts; on a timeout the controller signals the members of the
  group that did not answer, so each writes the stacks of all its threads to
  `<run>/stacks/<role>-<i>.txt` (even when stuck inside C code), and the run stops with RoleTimeout.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_DUMP_FILES: list[Any] = []  # open files faulthandler writes to (kept open for the process's life)


class RoleTimeout(RuntimeError):
    """A remote call did not return in time; the members' stacks were dumped."""


class LearnerFailed(RuntimeError):
    """A learner rank died; the run cannot continue without its state."""


def is_actor_death(err: BaseException) -> bool:
    try:
        import ray
    except ImportError:
        return False
    return isinstance(err, ray.exceptions.RayActorError)


# ----------------------------------------------------------------- stack dumps
def _arm(_actor: Any, path: str) -> tuple[str, int]:
    """Inside an actor: SIGUSR1 writes every thread's stack to `path`; returns (node id, pid)."""
    import faulthandler

    import ray

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    out = open(path, "a")  # noqa: SIM115 (faulthandler needs the file open until the process ends)
    _DUMP_FILES.append(out)
    faulthandler.register(signal.SIGUSR1, file=out, all_threads=True)
    return ray.get_runtime_context().get_node_id(), os.getpid()


def _signal(pid: int) -> None:
    os.kill(pid, signal.SIGUSR1)


def arm_stack_dumps(group, folder: Path) -> None:
    """Every member of a remote group dumps its stacks to <folder>/<role>-<i>.txt on SIGUSR1."""
    if not group.remote:
        return
    group.stacks = [Path(folder) / f"{group.name}-{i}.txt" for i in range(len(group))]
    group.processes = [None] * len(group)
    for index in range(len(group)):
        arm_member(group, index)


def arm_member(group, index: int) -> None:
    """Member `index` (a new actor, after a restart) dumps its stacks to its file on SIGUSR1."""
    import ray

    group.processes[index] = ray.get(group.members[index].__ray_call__.remote(_arm, str(group.stacks[index])))


def dump_stacks(group, wait_s: float = 3.0) -> list[Path]:
    """Signal every member of the group (on its node) to write its stacks; returns the files."""
    processes = group.processes
    if not processes:
        return []
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    sent = [ray.remote(num_cpus=0)(_signal).options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
            .remote(pid) for node, pid in processes]
    ray.get(sent, timeout=30)
    time.sleep(wait_s)  # faulthandler writes from the signal handler, at once; the file system may lag
    return [path for path in group.stacks if path.is_file()]


# ----------------------------------------------------------------- restarts
def restart_dead(groups: dict[str, Any], kinds: tuple[str, ...]) -> int:
    """Replace the dead members of the named groups (re-arming their stack dumps); returns how many."""
    restarted = 0
    for kind in kinds:
        group = groups.get(kind)
        if group is None:
            continue
        for index in group.dead_members():
            log.warning("%s %d died: starting a new one", kind, index)
            group.restart(index)
            if group.stacks:
                arm_member(group, index)
            restarted += 1
    return restarted
