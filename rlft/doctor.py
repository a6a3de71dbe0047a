"""`rlft doctor`: versions, devices, and whether Ray / DeepSpeed / vLLM work on this machine."""

from __future__ import annotations

import importlib
import platform
import time
from typing import Callable

PACKAGES = ("torch", "transformers", "peft", "deepspeed", "ray", "vllm", "wandb", "tokenizers")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as err:  # a broken install is exactly what doctor reports
            versions[name] = f"NOT USABLE ({type(err).__name__}: {err})"
    return versions


def devices() -> dict[str, str]:
    import torch

    info = {"cuda": str(torch.cuda.is_available()), "cpu_threads": str(torch.get_num_threads())}
    if torch.cuda.is_available():
        info["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return info


def _check_ray() -> str:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        @ray.remote(num_cpus=0)
        def ping() -> str:
            return "pong"

        return ray.get(ping.remote())
    finally:
        if started:
            ray.shutdown()


def _check_deepspeed() -> str:
    from deepspeed.accelerator import get_accelerator

    return f"accelerator={get_accelerator().device_name()}"


def _check_vllm() -> str:
    import vllm  # noqa: F401  (import is the check; engines are exercised by the test suite)

    return "importable"


CHECKS: dict[str, Callable[[], str]] = {"ray": _check_ray, "deepspeed": _check_deepspeed, "vllm": _check_vllm}


def run_checks() -> dict[str, str]:
    results = {}
    for name, check in CHECKS.items():
        t0 = time.time()
        try:
            results[name] = f"ok ({check()}, {time.time() - t0:.1f}s)"
        except Exception as err:
            results[name] = f"FAILED: {type(err).__name__}: {err}"
    return results
