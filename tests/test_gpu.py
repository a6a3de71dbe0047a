"""GPU checks (pytest -m gpu). tests/conftest.py skips every `gpu`-marked test where torch sees no CUDA GPU.

The learner check is bench/gpu_learner_check.py's: 3 SFT and 3 GPPO learner steps (DeepSpeed + LoRA,
bf16, NCCL) on one GPU, each loss and gradient norm finite and within 5% of the committed float32 CPU
reference (bench/data/gpu_learner_check_cpu.json, kept current by
tests/test_learner.py::test_gpu_learner_check_cpu_reference_is_current).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Loaded at collection, so a broken bench script fails on CPU machines too instead of hiding behind the skip.
_spec = importlib.util.spec_from_file_location("gpu_learner_check", ROOT / "bench" / "gpu_learner_check.py")
gpu_learner_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_learner_check)


@pytest.mark.gpu
def test_gpu_learner_matches_the_cpu_reference(tmp_path):
    reference = json.loads(gpu_learner_check.DEFAULT_REFERENCE.read_text())
    rows, info, ok = gpu_learner_check.check(reference, tmp_path)
    assert info["device"].startswith("cuda") and info["backend"] == "nccl", info
    assert len(rows) == 2 * 3 * 2  # (sft, gppo) x 3 steps x (loss, grad_norm)
    assert ok, [r for r in rows if not r["ok"]]
