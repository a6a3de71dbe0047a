"""No process outlives the role that started it (remote modes).

A generator's vLLM engine runs as child processes of its Ray actor: an engine core and its
workers, several GB each. When the actor dies without closing the engine (SIGKILL, Ray's memory
monitor, `ray.kill`, the driver's end), nothing tells them: they keep their memory until someone
kills them by hand. Ray cleans up children only on a graceful exit (direct children), or with
options that must be set when the cluster starts.

So every remote role member starts a guard (`guard_process_tree`, called by rlft.runtime when the
actor is created): a small process outside the actor's process tree and session, so that neither
Ray nor a Ctrl-C ends it with the actor. It notes the actor's descendants every second and, once
the actor is gone however it died, ends them: SIGTERM, so an engine core can stop its workers
and free shared memory, then SIGKILL for whatever is left after GRACE_S. Then it exits.

Run as `python -m rlft.processes <pid> <create time>`, this module is that guard.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # how often the guard notes the actor's descendants
GRACE_S = 5.0  # between SIGTERM and SIGKILL


def guard_process_tree(_actor=None) -> int | None:
    """Inside a role's process: start the guard that ends this process's descendants once it has
    died; returns the guard's pid (None when it could not start: the run goes on unguarded).
    `_actor` is the role instance when Ray's `__ray_call__` runs this."""
    import psutil

    me = psutil.Process()
    # The package's parent folder first: the guard imports this module wherever the role found it.
    paths = [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    try:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "rlft.processes", str(me.pid), repr(me.create_time())], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        with launcher.stdout:
            answer = launcher.stdout.readline()
        launcher.wait()
        return int(answer)
    except (OSError, ValueError) as err:
        log.warning("no process guard for pid %d (%r): its child processes may outlive it", me.pid, err)
        return None


def alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def end_processes(processes, grace_s: float = GRACE_S) -> None:
    """End each process that still runs and everything it started: SIGTERM, then SIGKILL after grace_s.
    psutil checks a process's creation time before signalling it, so a reused pid is never hit."""
    import psutil

    targets: dict[int, psutil.Process] = {}
    for process in processes:
        if not alive(process):
            continue
        targets[process.pid] = process
        try:
            targets.update((child.pid, child) for child in process.children(recursive=True))
        except psutil.Error:
            pass
    for process in targets.values():
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(list(targets.values()), timeout=grace_s)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass


def watch(pid: int, create_time: float) -> None:
    """Note the descendants of process `pid` until it ends, then end them."""
    import psutil

    try:
        actor = psutil.Process(pid)
        if abs(actor.create_time() - create_time) > 0.01:
            return  # the actor is gone already and its pid belongs to another process
    except psutil.NoSuchProcess:
        return
    seen: dict[tuple[int, float], psutil.Process] = {}
    while alive(actor):
        try:
            for child in actor.children(recursive=True):
                seen.setdefault((child.pid, child.create_time()), child)
        except psutil.Error:
            pass
        try:
            actor.wait(timeout=REFRESH_S)  # returns at once when the actor ends
        except psutil.TimeoutExpired:
            pass
    end_processes(seen.values())


def main(argv: list[str]) -> None:
    """The guard: fork once more and exit, so the guard is not a child of the actor (Ray kills an
    exiting actor's children); the child prints its pid for the actor and watches."""
    pid, create_time = int(argv[0]), float(argv[1])
    child = os.fork()
    if child:
        print(child, flush=True)
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    watch(pid, create_time)


if __name__ == "__main__":
    main(sys.argv[1:])
