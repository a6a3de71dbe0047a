"""Checkpoint folders and resume bookkeeping without roles: atomic commit, discovery, retention,
the recipe check, metrics set aside, the codec of batches generated ahead, skipped steps."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pytest
import torch
import yaml

from rlft.config import dump_config
from rlft.control.checkpoints import (BATCH_FILE, COMPLETE, RESUME_DIR, commit, complete_checkpoints, find_resume_point,
                                      partial_dir, prune, read_state, rollout_from_json, rollout_to_json, write_state)
from rlft.control.resume import RunFinished, StopOnSignal, config_differences, resume_point
from rlft.control.run_dirs import FINISHED
from rlft.data.sampler import EpochSampler
from rlft.errors import ResumeError
from rlft.roles.engine_setup import SkippingAdamW
from rlft.tracking import set_aside_rows_after
from rlft.types import Example, Rollout, Score, Segment
from tests.helpers import tiny_config


def write_checkpoint(run_dir, step, complete=True):
    folder = partial_dir(run_dir, f"step_{step}")
    write_state(folder / RESUME_DIR, {"step": step, "policy_version": step, "iteration": step}, None)
    if complete:
        return commit(run_dir, f"step_{step}", folder)
    return folder


def test_only_complete_checkpoints_are_found(tmp_path):
    run = tmp_path / "run"
    write_checkpoint(run, 2)
    write_checkpoint(run, 4)
    write_checkpoint(run, 6, complete=False)  # a write killed before it finished
    assert [f.name for f in complete_checkpoints(run)] == ["step_2", "step_4"]
    assert not (run / "checkpoints" / "step_6").exists()
    # a folder named like a checkpoint but without the marker (e.g. copied half-way) is not one either
    (run / "checkpoints" / "step_8" / RESUME_DIR).mkdir(parents=True)
    (run / "checkpoints" / "step_8" / RESUME_DIR / "state.json").write_text("{}")
    assert find_resume_point(run)[1].name == "step_4"


def test_commit_keeps_an_existing_folder_aside(tmp_path):
    run = tmp_path / "run"
    first = write_checkpoint(run, 2)
    (first / "marker").write_text("old")
    write_checkpoint(run, 2)
    aside = [f for f in (run / "checkpoints").iterdir() if f.name.startswith("step_2.superseded-")]
    assert len(aside) == 1 and (aside[0] / "marker").read_text() == "old"
    assert (run / "checkpoints" / "step_2" / COMPLETE).is_file()


def test_retention_keeps_the_newest(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 6, 8):
        write_checkpoint(run, step)
    assert prune(run, None) == []
    removed = prune(run, 2)
    assert sorted(f.name for f in removed) == ["step_2", "step_4"]
    assert [f.name for f in complete_checkpoints(run)] == ["step_6", "step_8"]


def test_newest_run_folder_is_resumed(tmp_path):
    base = tmp_path / "runs" / "job"
    write_checkpoint(base, 2)
    write_checkpoint(base.with_name("job-2"), 4)
    folder, checkpoint, finished = find_resume_point(base)
    assert folder.name == "job-2" and checkpoint.name == "step_4" and not finished


def test_resume_auto_starts_fresh_refuses_another_recipe_and_leaves_a_finished_run(tmp_path):
    cfg = tiny_config(tmp_path, "job", resume="auto")
    assert resume_point(cfg) is None  # nothing there yet: a new run
    write_checkpoint(cfg.run_dir, 2)
    (cfg.run_dir / "config.yaml").write_text(dump_config(tiny_config(tmp_path, "job", train={"lr": 5e-4})))
    with pytest.raises(ResumeError, match="train.lr"):
        resume_point(cfg)
    # where and how it runs may change
    (cfg.run_dir / "config.yaml").write_text(dump_config(tiny_config(tmp_path, "job", tracking={"wandb": "offline"})))
    assert resume_point(cfg).state["step"] == 2
    (cfg.run_dir / FINISHED).write_text(json.dumps({"steps": 4}))
    with pytest.raises(RunFinished) as done:
        resume_point(cfg)
    assert done.value.summary == {"steps": 4}


def test_resume_from_a_named_folder_needs_a_complete_step_checkpoint(tmp_path):
    final = tmp_path / "run" / "checkpoints" / "final"
    final.mkdir(parents=True)
    cfg = tiny_config(tmp_path, "job", resume=str(final))
    with pytest.raises(ResumeError, match="not a complete step checkpoint"):
        resume_point(cfg)


def test_config_differences_names_keys():
    saved = yaml.safe_dump({"train": {"lr": 1.0, "steps": 4}, "runtime": {"mode": "local"}, "resume": "never"})
    now = {"train": {"lr": 2.0, "steps": 4}, "runtime": {"mode": "inline"}, "resume": "auto", "extra": {"a": 1}}
    assert config_differences(saved, now) == ["extra.a", "train.lr"]


def test_metrics_after_the_checkpoint_are_set_aside(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (0, 1, 2, 3, 4)))
    set_aside_rows_after(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.after_step_2.jsonl").read_text().splitlines()] == [3, 4]


def test_rollouts_generated_ahead_round_trip(tmp_path):
    rollout = Rollout(Example("1+1=", "2", "2", {"mode": "low", "operands": [1, 1]}), 3, [1, 2], [5, 6, 7],
                      [-0.5, -0.25, -1.0], "2", 7, "stop", [Segment(0, 2, "step", "2\n"), Segment(2, 3, "turn")],
                      Score(1.0, True, {"answer": 1.0}, [0.5, 0.5]), temperature=0.7, token_versions=[6, 7, 7])
    later = dataclasses.replace(rollout, version=8, token_versions=[])
    write_state(tmp_path, {"step": 1}, [([rollout], {"reward/mean": 1.0}), ([later], {"reward/mean": 0.5})])
    state, batches = read_state(tmp_path)
    assert state == {"step": 1} and batches == [([rollout], {"reward/mean": 1.0}), ([later], {"reward/mean": 0.5})]
    assert rollout_from_json(rollout_to_json(rollout)) == rollout
    # a checkpoint from before several batches could be ahead: one batch at the top level of the file
    (tmp_path / BATCH_FILE).write_text(json.dumps({"items": [rollout_to_json(later)], "metrics": {"m": 2.0}}))
    assert read_state(tmp_path)[1] == [([later], {"m": 2.0})]
    write_state(tmp_path / "none", {"step": 2}, [])
    assert read_state(tmp_path / "none") == ({"step": 2}, [])


def test_sampler_state_continues_the_same_order():
    a, b = EpochSampler(7, seed=3), EpochSampler(7, seed=3)
    a.next_indices(10)  # into the second epoch
    b.load_state(a.state())
    assert a.next_indices(9) == b.next_indices(9)


def test_skipping_adamw_leaves_weights_and_moments_alone_on_nan():
    weight = torch.nn.Parameter(torch.ones(3))
    opt = SkippingAdamW([weight], lr=0.1, weight_decay=0.1)
    weight.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    after_one, state = weight.detach().clone(), {k: v.clone() for k, v in opt.state[weight].items()}
    weight.grad = torch.tensor([1.0, float("nan"), 3.0])
    opt.step()
    assert opt.overflow
    assert torch.equal(weight.detach(), after_one)
    assert all(torch.equal(opt.state[weight][k], v) for k, v in state.items())
    weight.grad = torch.tensor([1.0, 1.0, 1.0])
    opt.step()
    assert not opt.overflow and not torch.equal(weight.detach(), after_one)


def test_sigterm_is_deferred_once_and_the_handler_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # something else (ray.init) takes SIGTERM over
        stop.install()
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        # the second one would kill: the handler from before the first install is back
        assert signal.getsignal(signal.SIGTERM) == before
    assert signal.getsignal(signal.SIGTERM) == before


def test_overwrite_forgets_that_the_old_run_finished(tmp_path):
    from rlft.control.run_dirs import prepare_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / FINISHED).write_text("{}")
    assert prepare_run_dir(run, "overwrite", "a: 1\n") == run
    assert not (run / FINISHED).exists()  # else resume=auto would take the new run for finished
