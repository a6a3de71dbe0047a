"""bench/cluster_sim.py's discrete-event model of the loop on G generator and L learner devices: the synchronous
loop's time by hand, the one-step overlap's by hand, the staleness bound, the transports' scaling."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parent.parent / "bench" / "cluster_sim.py"
_spec = importlib.util.spec_from_file_location("cluster_sim", _path)
sim = importlib.util.module_from_spec(_spec)
sys.modules["cluster_sim"] = sim  # dataclasses look their module up while the file runs
_spec.loader.exec_module(sim)

# 1000 tokens a batch of 10 samples: 10 s of generation on one engine, 10 s of training on one learner
COSTS = sim.Costs(batch_samples=10, batch_tokens=1000.0, gen_tokens_per_s=100.0, train_tokens_per_s=100.0,
                  length_cv=0.0)
FREE = sim.Transport(0.0, per_generator=False)


def test_the_synchronous_loop_is_generate_then_train_then_sync():
    """k = 0, 4 iterations, sync 2 s: 4 x (10 + 10 + 2) = 88 s; 40 samples / 88 s; engines busy 40/88."""
    out = sim.simulate(COSTS, sim.Transport(2.0, per_generator=False), 1, 1, staleness=0, iterations=4)
    assert out.seconds == pytest.approx(88.0)
    assert out.samples_per_s == pytest.approx(40 / 88)
    assert out.generator_busy == pytest.approx(40 / 88) and out.learner_busy == pytest.approx(40 / 88)
    assert out.mean_staleness == 0.0


def test_one_step_of_staleness_overlaps_generation_with_training():
    """k = 1, no sync cost, generation = training = 10 s: batch j + 1 is sampled while batch j trains, so
    4 iterations take 10 + 4 x 10 = 50 s; every batch after the first is one version behind."""
    out = sim.simulate(COSTS, FREE, 1, 1, staleness=1, iterations=4)
    assert out.seconds == pytest.approx(50.0)
    assert out.mean_staleness == pytest.approx(3 / 4)
    assert sim.simulate(COSTS, FREE, 1, 1, staleness=0, iterations=4).seconds == pytest.approx(80.0)


@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_staleness_stays_within_the_bound_and_more_of_it_is_never_slower(k):
    """Fast generators (4 engines) and slow learners: the buffer fills up to the bound and no further."""
    costs = sim.Costs(**{**COSTS.__dict__, "length_cv": 0.3})
    out = sim.simulate(costs, sim.Transport(1.0, per_generator=True), 4, 1, staleness=k, iterations=30)
    assert out.mean_staleness <= k
    if k:
        looser = sim.simulate(costs, sim.Transport(1.0, per_generator=True), 4, 1, staleness=k - 1, iterations=30)
        assert out.samples_per_s >= looser.samples_per_s - 1e-9
        assert out.mean_staleness > 0


def test_a_sync_pauses_generation_that_it_overlaps():
    """Work of 10 s from 0: a sync over [5, 7] pushes the end to 12; one over [11, 12] then overlaps the pushed
    window and adds 1 more; one over [20, 21] does not touch it."""
    assert sim.delayed_by_syncs(0.0, 10.0, [(5.0, 7.0)]) == pytest.approx(12.0)
    assert sim.delayed_by_syncs(0.0, 10.0, [(5.0, 7.0), (11.0, 12.0), (20.0, 21.0)]) == pytest.approx(13.0)
    assert sim.delayed_by_syncs(3.0, 2.0, [(0.0, 4.0)]) == pytest.approx(6.0)  # it started mid-sync


def test_the_object_store_pays_per_generator_and_the_collective_once():
    assert sim.sync_seconds(sim.Transport(2.0, per_generator=True), 8) == 16.0
    assert sim.sync_seconds(sim.Transport(2.0, per_generator=False), 8) == 2.0
    assert sim.training_seconds(sim.Costs(**{**COSTS.__dict__, "allreduce_s": 0.5}), 2) == pytest.approx(5.0 + 1.0)
