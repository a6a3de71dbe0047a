"""No process outlives its run, and a role killed for memory is a fault like any other.

* rlft.processes: a guard ends the process tree of a role that dies (SIGKILL included): with plain
  processes, and with a real vLLM generator killed mid-run, whose engine core and workers end within
  seconds; a run that fails leaves none of its vLLM processes behind.
* rlft.faults / rlft.control.recovery: Ray's OutOfMemoryError is classified (role, memory figures); a
  generator killed for memory is replaced while runtime.max_restarts allows, otherwise the run stops
  with a message naming the role, the memory at the kill and the settings to lower.

Processes are told apart by the pid tree of the actors this test started, recorded before each kill:
other runs on the machine have vLLM processes of their own. Ray 2.60 kills a dead worker's process
group itself when started with its default settings here, but not every cluster runs such a Ray with
that setting; the real-generator test turns it off, so what ends the processes is the guard.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import ray

from rlft.control import Controller
from rlft.control.recovery import Recovery, explain_fault
from rlft.faults import RoleOutOfMemory, is_actor_death, memory_kill
from rlft.processes import REFRESH_S, alive
from tests.helpers import rl_config

LOCAL = {"mode": "local", "num_cpus": 4}


def oom_error(pid: int, node_id: str = "0a1b2c", task: str = "GeneratorActor.generate"):
    """What Ray 2.5x raises when its memory monitor kills the worker with this pid (figures of issue 24)."""
    return ray.exceptions.OutOfMemoryError(
        "Task was killed due to the node running low on memory.\n"
        f"Memory on the node (IP: 10.0.0.7, ID: {node_id}) was 22.70GB used / 23.50GB limit (0.966). "
        "Ray killed 1 worker(s) based on the killing policy: "
        f"(job ID=01000000, lease ID=77, task name={task}, required resources={{CPU: 1}}, pid={pid}, "
        "actual memory used=2.60GB, worker ID=5e6f)")


def vllm_tree(pid: int) -> list[psutil.Process]:
    """The vLLM engine-core and worker processes descended from process `pid`."""
    found = []
    for process in psutil.Process(pid).children(recursive=True):
        try:
            text = process.name() + " " + " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "VLLM" in text or "EngineCore" in text:
            found.append(process)
    return found


def guards_of(pids: list[int]) -> list[psutil.Process]:
    """Running guard processes (python -m rlft.processes <pid> ...) of these pids."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "rlft.processes" in cmdline and any(str(pid) in cmdline for pid in pids) and alive(process):
            found.append(process)
    return found


# ----------------------------------------------------------------- memory kills, classified
def test_ray_memory_kills_are_read_in_both_message_formats():
    new = memory_kill(oom_error(4242))
    assert (new.node_used_gb, new.node_limit_gb, new.node_id) == (22.7, 23.5, "0a1b2c")
    assert new.workers == {4242: ("GeneratorActor.generate", 2.6)}
    old = memory_kill(ray.exceptions.OutOfMemoryError(  # the message of Ray 2.1 to 2.4x
        "Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.7, ID: 9f) where "
        "the task (actor ID: 3c, name=LearnerActor.train_step, pid=515, memory used=5.02GB) was running was "
        "22.71GB / 23.50GB (0.966), which exceeds the memory usage threshold of 0.95."))
    assert (old.node_used_gb, old.node_limit_gb, old.workers) == (22.71, 23.5, {515: ("LearnerActor.train_step", 5.02)})
    assert memory_kill(RuntimeError("memory")) is None
    assert is_actor_death(oom_error(1))  # replaced like a dead actor


class FakeGroup:
    """What the fault handling asks of a remote RoleGroup whose member 0 (process `pid`) died."""

    def __init__(self, name: str, pid: int):
        self.name, self.processes, self.stacks, self.restarted = name, [("0a1b2c", pid)], None, []

    def dead_members(self) -> list[int]:
        return [] if self.restarted else [0]

    def restart(self, index: int) -> None:
        self.restarted.append(index)


def killed_once(pid: int):
    """A call that the memory monitor cuts short once (killing `pid`), then succeeds."""
    calls = []

    def call():
        calls.append(1)
        if len(calls) == 1:
            raise oom_error(pid)
        return "batch"
    return call


def test_a_generator_killed_for_memory_is_replaced_while_the_policy_allows(tmp_path):
    generator = FakeGroup("generator", pid=4242)
    recovery = Recovery(rl_config(tmp_path, "oom", runtime={"max_restarts": 1}), {"generator": generator})
    assert recovery.recovering(killed_once(4242)) == "batch"
    assert generator.restarted == [0] and recovery.restarts == 1

    generator = FakeGroup("generator", pid=4242)
    cfg = rl_config(tmp_path, "oom", runtime={"max_restarts": 0}, sync={"weights": "merged"})
    recovery = Recovery(cfg, {"generator": generator})
    with pytest.raises(ray.exceptions.OutOfMemoryError) as raised:
        recovery.recovering(killed_once(4242))
    stop = explain_fault(raised.value, cfg, recovery.roles, cfg.run_dir)
    assert isinstance(stop, RoleOutOfMemory) and generator.restarted == []
    text = str(stop)
    for part in ("generator 0 was killed by Ray's memory monitor", "the node had 22.7 of 23.5 GB in use",
                 "the killed process used 2.6 GB", "runtime.max_restarts (0)", "generator.kv_cache_mb (now 64)",
                 "generator.count (now 1)", "model.dtype=bfloat16 (now auto", "sync.weights=adapter (now merged",
                 "The newest checkpoint is none", "resume=auto"):
        assert part in text, (part, text)


def test_a_learner_killed_for_memory_stops_the_run_naming_what_to_lower(tmp_path):
    generator, learner = FakeGroup("generator", pid=4242), FakeGroup("learner", pid=515)
    generator.restarted = [0]  # alive
    cfg = rl_config(tmp_path, "oom")
    recovery = Recovery(cfg, {"generator": generator, "learner": learner})
    with pytest.raises(ray.exceptions.OutOfMemoryError) as raised:
        recovery.recovering(killed_once(515))
    assert generator.restarted == [0] and learner.restarted == []  # nothing replaced
    text = str(explain_fault(raised.value, cfg, recovery.roles, cfg.run_dir))
    assert text.startswith("learner 0 was killed by Ray's memory monitor: the node had 22.7 of 23.5 GB"), text
    assert "optimizer state" in text and "train.micro_batch_size (now 4)" in text and "learner.count (now 1)" in text


# ----------------------------------------------------------------- process guard
CHILDREN = """
import subprocess, sys, time
from rlft.processes import guard_process_tree
print(guard_process_tree(), flush=True)
subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                  "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"])
time.sleep(300)
"""


def test_the_guard_ends_the_tree_of_a_process_killed_with_sigkill():
    parent = subprocess.Popen([sys.executable, "-c", CHILDREN], stdout=subprocess.PIPE, text=True)
    guard = psutil.Process(int(parent.stdout.readline()))
    assert guard.ppid() != parent.pid  # outside the tree: Ray kills an exiting actor's children
    deadline = time.time() + 30
    while len(psutil.Process(parent.pid).children(recursive=True)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    tree = psutil.Process(parent.pid).children(recursive=True)
    time.sleep(3 * REFRESH_S)  # the guard notes descendants every REFRESH_S (slower on a loaded machine)
    parent.kill()
    parent.wait()
    _, left = psutil.wait_procs(tree, timeout=30)
    assert len(tree) == 2 and not left
    deadline = time.time() + 15
    while alive(guard) and time.time() < deadline:  # and the guard ends too
        time.sleep(0.1)
    assert not alive(guard)


# ----------------------------------------------------------------- a real generator, killed and failed
class KilledForMemoryThenFailed(Controller):
    """Iteration 1: Ray's memory monitor kills generator 0 while it samples (SIGKILL, then the
    OutOfMemoryError Ray raises for the call); iteration 2: an error in the loop ends the run."""

    killed: list[psutil.Process] = []  # the killed generator's vLLM processes
    left_after_kill: list[psutil.Process] = []
    seconds_to_end = None
    live: list[psutil.Process] = []  # the replacement's, when the run fails
    actor_pids: list[int] = []

    def iteration(self, iteration, last=False):
        node, pid = self.roles["generator"].processes[0]
        self.actor_pids = [*self.actor_pids, pid]
        if iteration == 1:
            real = self.source.next_batch

            def killed_for_memory(*args):
                if self.seconds_to_end is None:  # once; the retry samples
                    deadline = time.time() + 30
                    while not self.killed and time.time() < deadline:  # a loaded machine may list them late
                        self.killed = vllm_tree(pid)
                        time.sleep(0.2)
                    os.kill(pid, signal.SIGKILL)
                    start = time.time()
                    _, self.left_after_kill = psutil.wait_procs(self.killed, timeout=30)
                    self.seconds_to_end = time.time() - start
                    raise oom_error(pid, node)
                return real(*args)
            self.source.next_batch = killed_for_memory
        if iteration == 2:
            deadline = time.time() + 30
            while not self.live and time.time() < deadline:  # a loaded machine may list them late
                self.live = vllm_tree(pid)
                time.sleep(0.2)
            raise RuntimeError("injected failure")
        return super().iteration(iteration, last)


@pytest.mark.long
@pytest.mark.own_ray  # Ray started with its process-group clean-up off
def test_no_vllm_process_outlives_a_generator_killed_for_memory_or_a_failed_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_process_group_cleanup_enabled", "0")  # Ray's own clean-up off: the guard's test
    # vLLM's engine core and worker in processes of their own (GPU engines' layout; CPU ones run in the actor)
    cfg = rl_config(tmp_path, "oom", runtime=LOCAL, train={"steps": 3}, learner={"zero_stage": 0},
                    generator={"engine_processes": "separate"})
    ctl = KilledForMemoryThenFailed(cfg, show_progress=False)
    with pytest.raises(RuntimeError, match="injected failure"):
        ctl.run()
    # the SIGKILLed generator's engine core and workers ended within seconds; a new generator took over
    # (about REFRESH_S + GRACE_S nominally; the bound leaves room for a loaded machine)
    assert ctl.killed and not ctl.left_after_kill and ctl.seconds_to_end < 30, (ctl.killed, ctl.left_after_kill)
    print(f"the killed generator's {len(ctl.killed)} vLLM processes ended {ctl.seconds_to_end:.1f} s after its SIGKILL")
    assert ctl.recovery.restarts == 1 and len(set(ctl.actor_pids)) == 2
    log = (cfg.run_dir / "train.log").read_text()
    assert "generator 0 was killed by Ray's memory monitor: the node had 22.7 of 23.5 GB in use" in log
    # the failed run left none of its vLLM processes, nor the guards
    assert ctl.live
    _, left = psutil.wait_procs(ctl.live, timeout=30)
    assert not left, left
    deadline = time.time() + 30
    while guards_of(ctl.actor_pids) and time.time() < deadline:
        time.sleep(0.5)
    assert not guards_of(ctl.actor_pids)
