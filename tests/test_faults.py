"""Faults with real Ray actors (local mode): a generator and a reward actor killed mid-run are
replaced and the run ends as if nothing happened; a dead learner stops the run with its
checkpoint intact; a hung call becomes an error with the stuck role's stacks in the run folder."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from rlft.control import Controller
from rlft.faults import LearnerFailed, RoleTimeout
from rlft.roles import ROLES
from tests.helpers import StuckLearner, assert_same_weights, deterministic_rows, rl_config, tiny_config

LOCAL = {"mode": "local", "num_cpus": 4}


def kill(group, index: int) -> None:
    """SIGKILL the process of one member."""
    _, pid = group.processes[index]
    os.kill(pid, signal.SIGKILL)


class Killer(Controller):
    """Kills generator 0 during iteration 2, once its generate calls are in flight (a timer could fire
    after a fast iteration), and the reward actor before iteration 3."""

    def iteration(self, iteration, last=False):
        if iteration == 2:
            group = self.roles["generator"]
            gather = group._gather

            def kill_while_sampling(pending, method=""):
                if method == "generate" and group._gather is kill_while_sampling:
                    del group._gather   # once
                    kill(group, 0)
                return gather(pending, method)
            group._gather = kill_while_sampling
        if iteration == 3:
            kill(self.roles["reward"], 0)
        return super().iteration(iteration, last)


def test_dead_generator_and_reward_actor_are_replaced(tmp_path):
    def make(name):
        return rl_config(tmp_path, name, runtime=LOCAL, train={"steps": 3, "grad_clip": 1.0},
                         learner={"zero_stage": 0})

    whole = Controller(make("whole"), show_progress=False).run()
    survived = Killer(make("killed"), show_progress=False).run()
    rows = deterministic_rows(Path(survived["run_dir"]))
    assert [r.get("faults/restarts") for r in rows if "train/loss" in r] == [None, 1.0, 2.0]
    # the lost batch was generated again from the same prompts and seeds by the same policy: the run
    # is the uninterrupted one, step for step
    for row in rows:
        row.pop("faults/restarts", None)
    clean = deterministic_rows(Path(whole["run_dir"]))
    assert rows == clean
    assert_same_weights(Path(whole["run_dir"]), Path(survived["run_dir"]))


class LearnerKiller(Controller):
    def iteration(self, iteration, last=False):
        if iteration == 4:
            kill(self.learners, 0)
        return super().iteration(iteration, last)


def test_dead_learner_stops_the_run_with_its_checkpoint(tmp_path):
    def make(**extra):
        return tiny_config(tmp_path, "learner_dies", runtime=LOCAL, train={"steps": 6, "save_every": 2, "grad_clip": 1.0},
                           **extra)

    with pytest.raises(LearnerFailed, match=r"step_2.*resume=auto"):
        LearnerKiller(make(), show_progress=False).run()
    run_dir = make().run_dir
    assert "a learner rank died" in (run_dir / "train.log").read_text()
    done = Controller(make(resume="auto"), show_progress=False).run()
    assert done["resumed_from"].endswith("step_2") and done["steps"] == 6


def test_a_hung_call_dumps_stacks_and_stops(tmp_path):
    ROLES["learner"].register("stuck", StuckLearner, replace=True)
    try:
        cfg = tiny_config(tmp_path, "hang", runtime={**LOCAL, "call_timeout_s": 20, "roles": {"learner": "stuck"}},
                          train={"steps": 4, "grad_clip": 1.0})
        with pytest.raises(RoleTimeout, match=r"learner.train_step did not return within 20 s") as stopped:
            Controller(cfg, show_progress=False).run()
    finally:
        ROLES["learner"].unregister("stuck")
    dump = cfg.run_dir / "stacks" / "learner-0.txt"
    assert str(dump) in str(stopped.value)
    text = dump.read_text()
    assert "tests/helpers.py" in text and "in train_step" in text, text[-2000:]  # where it hangs
