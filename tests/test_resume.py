"""Exact resume with the real roles: a run stopped after step k and resumed with `resume=auto`
logs the same metrics and ends with the same weights as one that never stopped, and the
generators of the resumed run hold the resumed policy (its fingerprint and the parity probe).

Stopping is SIGTERM's path (the loop checkpoints after the iteration and raises RunStopped); the
signal itself is sent in test_sigterm_then_resume_auto from the command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlft.control import Controller, train
from rlft.control.resume import RunStopped
from tests.helpers import assert_same_weights, deterministic_rows, rl_config, tiny_config

class StopAfter(Controller):
    """Asks to stop after iteration `at`, as a SIGTERM during it would."""

    at = 2

    def iteration(self, iteration, last=False):
        metrics = super().iteration(iteration, last)
        if iteration == self.at:
            self.stop.requested = True
        return metrics


def assert_same_run(a: Path, b: Path) -> None:
    """Every logged value (timings aside) and every final weight equal, bit for bit."""
    rows_a, rows_b = deterministic_rows(a), deterministic_rows(b)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys(), ra["step"]
        for key in ra:
            if ra[key] != ra[key]:  # NaN (e.g. no grad norm without clipping)
                assert rb[key] != rb[key], key
            else:
                assert ra[key] == rb[key], (ra["step"], key, ra[key], rb[key])
    assert_same_weights(a, b)


def stop_and_resume(make_cfg, at: int = 2) -> tuple[Path, Path, dict]:
    """An uninterrupted run, and one stopped after iteration `at` and resumed with resume=auto."""
    whole = Controller(make_cfg("whole"), show_progress=False).run()
    StopAfter.at = at
    with pytest.raises(RunStopped, match="resume=auto"):
        StopAfter(make_cfg("stopped"), show_progress=False).run()
    resumed = Controller(make_cfg("stopped", resume="auto"), show_progress=False).run()
    return Path(whole["run_dir"]), Path(resumed["run_dir"]), resumed


def test_sft_resume_is_exact_and_keeps_everything(tmp_path):
    def make(name, **extra):
        return tiny_config(tmp_path, name, train={"steps": 6, "eval_every": 2, "save_every": 2, "keep_checkpoints": 2,
                                                  "grad_clip": 1.0}, **extra)

    whole, resumed, summary = stop_and_resume(make, at=3)
    assert summary["resumed_from"].endswith("step_3")
    assert_same_run(whole, resumed)
    # retention: the newest two step checkpoints; the final one always
    names = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert names == ["final", "step_4", "step_6"]
    # a finished run is left alone by resume=auto: its own summary comes back
    assert train(make("stopped", resume="auto"), show_progress=False) == summary


def test_rl_resume_is_exact_and_generators_run_the_resumed_policy(tmp_path):
    """GPPO with a vLLM generator and LIFT: a batch generated ahead at the stop (it is checkpointed and
    trained on after the resume) and mask refreshes on both sides of the stop (the resumed generators get
    every entry trained since the base model). LoRA's resume with generators: the two-rank test below."""
    peft = {"method": "lift", "r": 4, "alpha": 8, "lift_update_interval": 2}

    def make(name, **extra):
        return rl_config(tmp_path, name, peft=peft, rollout={"max_staleness": 1},
                         learner={"zero_stage": 0}, train={"steps": 4, "eval_every": 2, "grad_clip": 1.0}, **extra)

    whole, resumed, _ = stop_and_resume(make, at=2)
    assert_same_run(whole, resumed)
    rows = deterministic_rows(resumed)
    assert [r["sync/version"] for r in rows if "sync/version" in r] == [1.0, 2.0, 3.0, 4.0]
    log = (resumed / "train.log").read_text()
    assert "generators run the resumed policy (version 2)" in log


def test_local_mode_resume_with_two_zero3_ranks_is_exact(tmp_path):
    """Ray actors, 2 learner ranks at ZeRO-3 (LoRA, a vLLM generator): each rank's partition of the
    parameters, fp32 master weights and Adam moments is its own file, the resumed ranks continue bit
    for bit, and the generators get the gathered policy. (ZeRO-2's flat partitions, written the same way
    per rank: the SFT resume above.)"""
    def make(name, **extra):
        return rl_config(tmp_path, name, runtime={"mode": "local", "num_cpus": 4}, learner={"count": 2, "zero_stage": 3},
                         train={"steps": 3, "grad_clip": 1.0}, **extra)

    whole, resumed, summary = stop_and_resume(make, at=1)
    assert summary["learner_ranks"] == 2
    assert sorted(p.name for p in (resumed / "checkpoints" / "step_1" / "resume").glob("learner_rank*")) == [
        "learner_rank0.json", "learner_rank0.safetensors", "learner_rank1.json", "learner_rank1.safetensors"]
    assert_same_run(whole, resumed)


def test_sigterm_then_resume_auto(tmp_path):
    """The command line in local mode (ray.init installs its own SIGTERM handler; rlft's must win):
    SIGTERM mid-run stops with a checkpoint and exit status 143; the same command with resume=auto
    finishes with the weights of an uninterrupted run."""
    recipe = tmp_path / "recipe.yaml"
    local = {"mode": "local", "num_cpus": 2}
    cfg = tiny_config(tmp_path, "cli", runtime=local, train={"steps": 40, "grad_clip": 1.0}, eval={"num_examples": 0})
    from rlft.config import dump_config
    recipe.write_text(dump_config(cfg))
    env = {**os.environ, "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "rlft.cli", "train", "--quiet", str(recipe)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = cfg.run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:  # a few steps in
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "resume=auto" in err
    done = subprocess.run(command + ["resume=auto"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    whole = Controller(tiny_config(tmp_path, "cli-whole", runtime=local, train={"steps": 40, "grad_clip": 1.0},
                                   eval={"num_examples": 0}), show_progress=False).run()
    assert_same_run(Path(whole["run_dir"]), cfg.run_dir)


# ---------------------------------------------------------------- non-finite losses
def nan_at(steps: set[int]):
    """SFT's loss, NaN at the given optimizer steps (0-based)."""
    import dataclasses

    from rlft.algorithms import ALGORITHMS

    sft = ALGORITHMS["sft"]

    def loss(model, batch, cfg, counts):
        value, metrics = sft.micro_batch_loss(model, batch, cfg, counts)
        return (value * float("nan") if counts.step in steps else value), metrics

    return dataclasses.replace(sft, micro_batch_loss=loss)


class WatchWeights(Controller):
    def learner_step(self, rows, group=None, spec=None):
        before = self.learners.call_one(0, "trainable_state")
        metrics = super().learner_step(rows, group, spec)
        self.seen.append((before, self.learners.call_one(0, "trainable_state")))
        return metrics


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_nan_loss_skips_the_step_and_training_goes_on(tmp_path, zero_stage):
    cfg = tiny_config(tmp_path, "nan", train={"steps": 4, "grad_clip": 1.0}, learner={"zero_stage": zero_stage})
    ctl = WatchWeights(cfg, show_progress=False)
    ctl.spec, ctl.seen = nan_at({1}), []
    summary = ctl.run()
    assert summary["steps"] == 4
    changed = [any(not torch.equal(before[k], after[k]) for k in before) for before, after in ctl.seen]
    assert changed == [True, False, True, True]  # step 1 left every weight as it was
    rows = {row["step"]: row for row in map(json.loads, (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines())
            if "train/skipped_steps" in row}
    assert [rows[s]["train/skipped_steps"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 1.0, 1.0]
    assert rows[2]["train/loss"] != rows[2]["train/loss"] and rows[4]["train/loss"] == rows[4]["train/loss"]
    assert "optimizer step 2 skipped" in (Path(summary["run_dir"]) / "train.log").read_text()


def test_a_run_of_nan_steps_stops_the_run(tmp_path):
    cfg = tiny_config(tmp_path, "nan_run", train={"steps": 8, "grad_clip": 1.0, "max_skipped_steps": 2})
    ctl = Controller(cfg, show_progress=False)
    ctl.spec = nan_at(set(range(8)))
    with pytest.raises(FloatingPointError, match="3 optimizer steps in a row.*max_skipped_steps=2"):
        ctl.run()
    assert "stopped by an error" in (cfg.run_dir / "train.log").read_text()
