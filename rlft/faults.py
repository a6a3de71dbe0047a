"""Surviving faults (remote modes): dead generator, reward and environment actors come back, a dead
learner stops the run with its checkpoint intact, and a hang becomes an error with stack dumps.

* A generator, reward or environment actor whose process died is replaced by a new actor built
  from the same arguments; the generators then get the current policy again (every change since
  the base model, fingerprinted and probed like any sync), and the batch that was lost is generated
  again from the same prompts and seeds. Nothing was trained on it, so nothing is trained on twice.
  Each replacement counts in `faults/restarts`.
* A learner rank that dies takes its optimizer state with it: the run stops (LearnerFailed) with
  the newest checkpoint untouched and a message that says how to continue.
* A process killed by Ray's memory monitor (ray.exceptions.OutOfMemoryError) is a dead actor like
  any other: a generator, reward or environment actor is replaced; when the run cannot go on, it
  stops with RoleOutOfMemory, which names the role, the memory figures of Ray's message and the
  settings that lower what that role holds.
* Every remote call waits at most `runtime.call_timeout_s`. Each actor registers Python's
  faulthandler on SIGUSR1 when it starts; on a timeout the controller signals the members of the
  group that did not answer, so each writes the stacks of all its threads to
  `<run>/stacks/<role>-<i>.txt` (even when stuck inside C code), and the run stops with RoleTimeout.
* With runtime.log_level quiet, each member's output goes to `<run>/logs/<role>-<i>.log` (rlft.logs).
  The error that stops a run because a member raised or died, and the warning about a member
  replaced, name that member's file and quote its last lines (`note_member_output`), so what the
  member printed before it failed still reaches the user.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlft.logs import output_note

log = logging.getLogger(__name__)

_DUMP_FILES: list[Any] = []  # open files faulthandler writes to (kept open for the process's life)


class RoleTimeout(RuntimeError):
    """A remote call did not return in time; the members' stacks were dumped."""


class LearnerFailed(RuntimeError):
    """A learner rank died; the run cannot continue without its state."""


class RoleOutOfMemory(RuntimeError):
    """Ray's memory monitor killed a role's process and the run cannot go on without it."""


def is_actor_death(err: BaseException) -> bool:
    """A role's process died: Ray's actor errors, and the OutOfMemoryError that Ray raises instead for
    the calls its memory monitor cut short when it killed the process."""
    try:
        import ray
    except ImportError:
        return False
    return isinstance(err, (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError))


# ----------------------------------------------------------------- memory kills
# Per role: the settings whose lower values make its members hold less, the biggest lever first.
MEMORY_SETTINGS = {
    "generator": ("generator.kv_cache_mb", "generator.count"),
    "learner": ("train.micro_batch_size", "train.max_length", "learner.count"),
    "critic": ("train.micro_batch_size", "train.max_length", "algorithm.critic_ranks"),
    "reward": ("reward.count",),
    "environment": ("environment.count",),
    "teacher": ("teacher.micro_batch_size", "teacher.count"),
    None: ("generator.kv_cache_mb", "generator.count", "train.micro_batch_size"),  # a worker of no role
}
# Values that shrink the weights and weight payloads generators and learners hold: key -> (value, saving).
MEMORY_CHOICES = {
    "model.dtype": (("bfloat16", "float16"), "half the memory of float32 weights"),
    "sync.weights": (("adapter",), "no whole-model payload copies"),
}


@dataclass(frozen=True)
class MemoryKill:
    """The figures of Ray's message when its memory monitor killed a worker (GB; None: not in the message)."""

    node_used_gb: float | None
    node_limit_gb: float | None
    node_id: str | None
    workers: dict[int, tuple[str | None, float | None]]  # pid -> (task name, memory used by that process)
    message: str


def memory_kill(err: BaseException) -> MemoryKill | None:
    """The figures of Ray's message when `err` is a kill by its memory monitor (the formats of Ray 2.x:
    "was 22.70GB used / 23.50GB limit" and the older "was running was 22.70GB / 23.50GB")."""
    try:
        import ray
    except ImportError:
        return None
    if not isinstance(err, ray.exceptions.OutOfMemoryError):
        return None
    text = str(err)
    node = re.search(r"was (?:running was )?([\d.]+)\s*GB(?: used)? / ([\d.]+)\s*GB", text)
    node_id = re.search(r"Memory on the node \(IP: [^,]*, ID: ([0-9a-f]+)", text)
    workers = {}
    for detail in re.findall(r"\(([^()]*\bpid=\d+[^()]*)\)", text):  # "(... name=X, pid=N, memory used=M GB ...)"
        name = re.search(r"\bname=([^,\s]+)", detail)
        used = re.search(r"memory used=([\d.]+)\s*GB", detail)
        workers[int(re.search(r"\bpid=(\d+)", detail)[1])] = (name and name[1], used and float(used[1]))
    return MemoryKill(float(node[1]) if node else None, float(node[2]) if node else None,
                      node_id and node_id[1], workers, text)


def killed_member(groups: dict[str, Any], kill: MemoryKill) -> tuple[str, int, int | None] | None:
    """(role, member index, pid) of the process the kill names (by node and pid), else of a dead member."""
    for kind, group in groups.items():
        for index, where in enumerate(group.processes or []):
            if where and where[1] in kill.workers and kill.node_id in (None, where[0]):
                return kind, index, where[1]
    for kind, group in groups.items():
        dead = group.dead_members()
        if dead:
            where = group.processes[dead[0]] if group.processes else None
            return kind, dead[0], where[1] if where else None
    return None


def _setting(cfg, dotted: str) -> str:
    """The value of a dotted config key ("?" when the config has no such key)."""
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part, "?")
    return str(value)


def memory_kill_summary(kill: MemoryKill, member: tuple[str, int, int | None] | None) -> str:
    """Who was killed for memory and the memory at the kill, as Ray's message gives it."""
    kind, index, pid = member or (None, None, None)
    names = [name for name, _ in kill.workers.values() if name]
    who = f"{kind} {index}" if kind else "a Ray worker" + (f" ({names[0]})" if names else "")
    figures = []
    if kill.node_used_gb is not None:
        figures.append(f"the node had {kill.node_used_gb:g} of {kill.node_limit_gb:g} GB in use")
    # the killed member's own figure; when the message lists one worker only, it is the one killed
    killed = kill.workers.get(pid) or (next(iter(kill.workers.values())) if len(kill.workers) == 1 else None)
    if killed and killed[1] is not None:
        figures.append(f"the killed process used {killed[1]:g} GB")
    return f"{who} was killed by Ray's memory monitor: " + ("; ".join(figures) or f"Ray said: {kill.message[:300]}")


def memory_kill_message(kill: MemoryKill, member: tuple[str, int, int | None] | None, cfg, checkpoint: str) -> str:
    """Why the run stops after a memory kill: the role, the memory at the kill, what to lower, how to continue."""
    kind = member[0] if member else None
    if kind == "learner":
        why = "A learner rank's optimizer state dies with it, so the run stops."
    else:
        why = (f"The run stops: a {kind or 'role'} is replaced at most runtime.max_restarts "
               f"({_setting(cfg, 'runtime.max_restarts')}) times in a row, and only while the loop runs.")
    lower = MEMORY_SETTINGS.get(kind, MEMORY_SETTINGS[None])
    advice = " or ".join(f"{key} (now {_setting(cfg, key)})" for key in lower)
    if kind in ("generator", "learner", None):
        choices = [f"{key}={values[0]} (now {_setting(cfg, key)}; {saving})" for key, (values, saving)
                   in MEMORY_CHOICES.items() if _setting(cfg, key) not in values]
        advice += "".join(f", or set {choice}" for choice in choices)
    return (f"{memory_kill_summary(kill, member)}. {why} To fit, lower {advice}. The newest checkpoint is "
            f"{checkpoint}; continue with: rlft train <recipe> [overrides] resume=auto")


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
            note = member_note(group, index)
            log.warning("%s %d died: starting a new one%s", kind, index, f"\n{note}" if note else "")
            group.restart(index)
            if group.stacks:
                arm_member(group, index)
            restarted += 1
    return restarted


# ----------------------------------------------------------------- the output of a member that failed
_ACTOR_ID = re.compile(r"\bactor_id[=:]\s*(?:ActorID\()?([0-9a-fA-F]{16,})")
_PID = re.compile(r"\bpid[=:]\s*(\d+)")


def _errors(err: BaseException, depth: int = 8):
    """err and the errors it was raised from or during, outermost first."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen and len(seen) < depth:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def member_of(err: BaseException, groups: dict[str, Any]) -> tuple[str, int] | None:
    """(role, member index) of the remote member whose failure `err` reports, else None. Ray names the
    actor: RayActorError.actor_id, and in its messages "actor_id=<hex>" (a task's error, also when its
    class is the user's error's as well) or "actor_id: <hex>" (a dead actor), with its "pid=" / "pid:".
    An error that names several (one failed because another's result was missing) is the innermost's."""
    ids: list[str] = []
    pids: list[int] = []
    for error in _errors(err):
        attribute = getattr(error, "actor_id", None)
        if isinstance(attribute, str):
            ids.append(attribute.lower())
        try:
            text = str(error)
        except Exception:  # noqa: BLE001 (a message that cannot be built names nobody)
            continue
        ids.extend(found.lower() for found in _ACTOR_ID.findall(text))
        pids.extend(int(found) for found in _PID.findall(text))
    members: dict[str, tuple[str, int]] = {}
    by_pid: dict[int, tuple[str, int]] = {}
    for kind, group in groups.items():
        if not getattr(group, "remote", False):
            continue
        for index, member in enumerate(group.members):
            actor_id = getattr(member, "_actor_id", None)
            if actor_id is not None:
                members[actor_id.hex().lower() if hasattr(actor_id, "hex") else str(actor_id).lower()] = (kind, index)
        for index, where in enumerate(group.processes or []):
            if where:
                by_pid[where[1]] = (kind, index)
    for actor_id in reversed(ids):
        if actor_id in members:
            return members[actor_id]
    for pid in reversed(pids):
        if pid in by_pid:
            return by_pid[pid]
    return None


def member_note(group, index: int) -> str | None:
    """The member's log file and its last lines (None when the member has no log file)."""
    logs = getattr(group, "logs", None)
    if not logs:
        return None
    return output_note(f"{group.name} {index}", Path(logs[index]))


def note_member_output(err: BaseException, groups: dict[str, Any], target: BaseException | None = None) -> str | None:
    """When `err` reports a member of one of `groups` that has a log file, add that file and its last
    lines to `target` (default `err`) as a note: Python prints notes under the traceback and the
    command line under its one-line error. Once per error; returns the note."""
    target = err if target is None else target
    if getattr(target, "_rlft_output_noted", False):
        return None
    found = member_of(err, groups)
    note = member_note(groups[found[0]], found[1]) if found else None
    if note is None:
        return None
    try:
        target.add_note(note)
        target._rlft_output_noted = True
    except (AttributeError, TypeError):  # an error that takes no attributes keeps its message as it is
        return None
    return note
