"""Shared fixtures, and the `gpu` marker's skip."""

import pytest

from rlft.algorithms import ALGORITHMS
from tests.helpers import LEARNER_ONLY_GPPO


@pytest.fixture
def learner_only_gppo():
    """Registers GPPO's learner step without generators (tests/helpers.py) for one test."""
    ALGORITHMS.register(LEARNER_ONLY_GPPO.name, LEARNER_ONLY_GPPO, replace=True)
    yield
    ALGORITHMS.unregister(LEARNER_ONLY_GPPO.name)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP barrier stalls on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Local-mode runs share one Ray instance: starting and stopping Ray costs ~7 s a run on 2 cores, and the
# suite makes dozens of local-mode runs. rlft.runtime.start leaves a Ray it finds running alone (a notebook's
# Ray is used the same way), so each run's controller uses this one and stops only its own actors and
# placement groups. Tests marked `own_ray` (their own cluster, or Ray started under an environment of
# their own) run with the shared instance stopped; the next local-mode run starts it again.
SHARED_RAY_CPUS = 8  # logical CPUs: more than any test's runtime.num_cpus or role demands


@pytest.fixture(autouse=True)
def shared_ray(request, monkeypatch):
    from rlft import runtime

    if request.node.get_closest_marker("own_ray"):
        _stop_ray()
        yield
        _stop_ray()
        return
    start = runtime.start

    def start_shared(mode, *, address=None, num_cpus=None, log_level="info"):
        if mode != "local":
            return start(mode, address=address, num_cpus=num_cpus, log_level=log_level)
        import ray

        if not ray.is_initialized():
            start(mode, num_cpus=SHARED_RAY_CPUS, log_level=log_level)
        return False  # not the run's own: the controller leaves it running

    monkeypatch.setattr(runtime, "start", start_shared)
    yield


def _stop_ray() -> None:
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def pytest_sessionfinish(session, exitstatus):
    _stop_ray()


def pytest_collection_modifyitems(config, items):
    """The `gpu` marker (pyproject.toml): such tests are collected everywhere and skipped, with the reason
    shown, where torch sees no CUDA GPU."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu test: torch.cuda.is_available() is False on this machine")
    for item in gpu_items:
        item.add_marker(skip)
