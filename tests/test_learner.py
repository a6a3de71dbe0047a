"""Real DeepSpeed learner ranks: 1 rank vs 2 ranks vs gradient accumulation give the same step."""

import pytest
import torch

from rlft.control import Controller
from rlft.data.sampler import EpochSampler
from tests.helpers import tiny_config


def _run_steps(cfg, steps: int = 2):
    """Loss and grad norm per step and the final trainable parameters, through the controller."""
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        sampler = EpochSampler(len(ctl.train_examples), seed=0)
        history = []
        for _ in range(steps):
            rows, _ = ctl.spec.build_rows(sampler.next_batch(ctl.train_examples, cfg.train.batch_size), ctl.row_ctx)
            out = ctl.learner_step(rows)
            history.append((out["loss"], out["grad_norm"]))
        return history, ctl.learners.call_one(0, "trainable_state"), len(ctl.learners)
    finally:
        ctl.close()


def _assert_same(a, b):
    (hist_a, state_a, _), (hist_b, state_b, _) = a, b
    for (loss_a, norm_a), (loss_b, norm_b) in zip(hist_a, hist_b):
        assert loss_a == pytest.approx(loss_b, rel=1e-5)
        assert norm_a == pytest.approx(norm_b, rel=1e-4)
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        torch.testing.assert_close(state_a[name], state_b[name], atol=1e-5, rtol=1e-4, msg=name)  # Adam amplifies fp noise on ~0 grads


def test_batch_equals_accumulation(tmp_path):
    """batch 8 in one micro-batch == 8 accumulated micro-batches of 1 (loss, grad norm, weights)."""
    whole = _run_steps(tiny_config(tmp_path, "whole", train={"micro_batch_size": 8}))
    accumulated = _run_steps(tiny_config(tmp_path, "accum", train={"micro_batch_size": 1}))
    _assert_same(whole, accumulated)


def test_two_ranks_equal_one_rank(tmp_path):
    """2 DeepSpeed ranks (Ray actors, ZeRO-2, gloo) == 1 rank on the same data."""
    one = _run_steps(tiny_config(tmp_path, "one", train={"micro_batch_size": 4}))
    two = _run_steps(tiny_config(tmp_path, "two", runtime={"mode": "local"}, learner={"count": 2}))
    assert one[2] == 1 and two[2] == 2
    _assert_same(one, two)


def test_lora_two_ranks_equal_one_rank(tmp_path):
    lora = {"method": "lora", "r": 4, "alpha": 8}
    one = _run_steps(tiny_config(tmp_path, "lora1", peft=lora, train={"lr": 1e-2}))
    two = _run_steps(tiny_config(tmp_path, "lora2", peft=lora, train={"lr": 1e-2}, runtime={"mode": "local"}, learner={"count": 2}))
    _assert_same(one, two)


def test_gpu_learner_check_cpu_reference_is_current(tmp_path):
    """bench/gpu_learner_check.py compares a GPU run with bench/data/gpu_learner_check_cpu.json: the same
    steps on this CPU in float32 must reproduce that file, or the GPU check would compare with stale numbers."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gpu_learner_check", root / "bench" / "gpu_learner_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    reference = json.loads((root / "bench" / "data" / "gpu_learner_check_cpu.json").read_text())
    found, info = check.run_all(tmp_path)
    assert (info["device"], info["dtype"], info["backend"]) == ("cpu", "torch.float32", "gloo")
    for algorithm in ("sft", "gppo"):
        for cpu, now in zip(reference[algorithm], found[algorithm], strict=True):
            assert now == pytest.approx(cpu, rel=1e-5), algorithm
    assert found["sft"][-1]["loss"] < found["sft"][0]["loss"]
