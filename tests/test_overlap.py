"""One-step-off-policy overlap (rollout.max_staleness = 1): the next batch is generated while the
learners train, by the policy one version behind, and recorded as such; 0 is the synchronous loop.
More batches ahead and weight updates in flight: tests/test_async.py."""

from __future__ import annotations

import threading

import pytest

from rlft.control import Controller
from tests.helpers import rl_config, tiny_config


class RecordingSource:
    """Wraps the run's source: which iteration was asked for, from which thread, with which
    generator version loaded, and which versions sampled the batch."""

    def __init__(self, source, controller):
        self.source, self.controller, self.calls = source, controller, []

    def __getattr__(self, name):  # the rest of the source interface (state, load_state)
        return getattr(self.source, name)

    def next_batch(self, iteration, policy_version):
        loaded = self.controller.roles["generator"].members[0].version
        items, metrics = self.source.next_batch(iteration, policy_version)
        self.calls.append({"iteration": iteration, "main_thread": threading.current_thread() is threading.main_thread(),
                           "loaded": loaded, "sampled_by": {r.version for r in items}})
        return items, metrics


def _run(tmp_path, name, staleness, iterations=3):
    ctl = Controller(rl_config(tmp_path, name, rollout={"max_staleness": staleness}, train={"steps": iterations},
                               eval={"num_examples": 4}), show_progress=False)
    ctl.setup()
    try:
        ctl.source = RecordingSource(ctl.source, ctl)
        if ctl.ahead is not None:  # the batches ahead come from the same source
            ctl.ahead.source = ctl.source
        logged = []
        log = ctl.tracker.log
        ctl.tracker.log = lambda metrics, step: (logged.append((step, dict(metrics))), log(metrics, step))
        ctl.loop()
        return ctl.source.calls, [m for _, m in logged if "train/loss" in m], ctl.policy_version
    finally:
        ctl.close()


def test_overlapped_batches_are_sampled_one_version_behind_and_the_synchronous_loop_by_the_newest(tmp_path):
    """max_staleness 1: batch i + 1 in the background while batch i trains, before its publish.
    max_staleness 0: every batch in the main thread by the newest policy. The first batch, sampled by
    version 0 in both loops from the same seed, is the same batch, so step 1 is the same step."""
    calls, trained, version = _run(tmp_path, "overlap", staleness=1)
    assert version == 3
    # batch 1 is generated up front; batch i + 1 in the background while batch i trains, before its publish
    assert [c["iteration"] for c in calls] == [1, 2, 3]
    assert [c["main_thread"] for c in calls] == [True, False, False]
    assert [c["loaded"] for c in calls] == [0, 0, 1]
    assert [c["sampled_by"] for c in calls] == [{0}, {0}, {1}]
    assert [m["rollout/staleness"] for m in trained] == [0.0, 1.0, 1.0]
    assert [m["sync/version"] for m in trained] == [1, 2, 3]
    assert [m["rollout/batches_ahead"] for m in trained] == [1.0, 1.0, 0.0]
    assert all(m["sync/parity_max_abs_diff"] < 1e-3 for m in trained)
    assert all("perf/time_wait_generation" in m for m in trained)

    sync_calls, sync_trained, _ = _run(tmp_path, "sync", staleness=0, iterations=2)
    assert [c["main_thread"] for c in sync_calls] == [True] * 2
    assert [c["sampled_by"] for c in sync_calls] == [{0}, {1}]
    assert [m["rollout/staleness"] for m in sync_trained] == [0.0] * 2
    assert not any("perf/time_wait_generation" in m for m in sync_trained)
    for key in ("reward/mean", "rollout/response_length", "train/loss", "train/grad_norm"):
        assert trained[0][key] == pytest.approx(sync_trained[0][key], abs=1e-6), key


def test_overlap_needs_generation(tmp_path):
    cfg = tiny_config(tmp_path, "sft", rollout={"max_staleness": 1})
    with pytest.raises(ValueError, match="generates nothing, so there is no generation to overlap"):
        Controller(cfg, show_progress=False).setup()
