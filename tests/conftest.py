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
