"""Asynchronous training (rollout.max_staleness = k, rollout.in_flight_updates): the bookkeeping of
batches generated ahead (admission by version, drops, checkpointed batches, a failed batch sampled
again) with a scripted source, and a real vLLM engine loading weights while requests are in flight."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from rlft.control.ahead import BatchesAhead
from rlft.rollouts import batch_staleness
from rlft.types import Example, Rollout
from tests.helpers import rl_config


def rollout(version: int) -> Rollout:
    return Rollout(Example(prompt="p", response=None, answer="a"), 0, [1], [2], [-0.5], "t", version)


class ScriptedSource:
    """A source whose batch j is one rollout begun by the version `started_at(j)` says (default: the
    version the generators hold when the batch starts); records (iteration, trained_at, thread)."""

    def __init__(self, held_version=lambda: 0, started_at=None, fail=()):
        self.held_version, self.started_at, self.fail = held_version, started_at, set(fail)
        self.drawn, self.calls = 0, []

    def state(self):
        return {"drawn": self.drawn}

    def load_state(self, state):
        self.drawn = state["drawn"]

    def next_batch(self, iteration, trained_at):
        self.drawn += 1
        self.calls.append((iteration, trained_at, threading.current_thread() is threading.main_thread()))
        if iteration in self.fail:
            self.fail.discard(iteration)
            from ray.exceptions import RayActorError

            raise RayActorError()
        version = self.started_at(iteration) if self.started_at else self.held_version()
        return [rollout(version)], {"drawn_before": float(self.drawn - 1)}


def now_by(source, version):
    return lambda it, after=None: source.next_batch(it, version())


def test_batches_ahead_are_admitted_k_at_a_time_and_trained_at_most_k_versions_late():
    version = [0]
    source = ScriptedSource(held_version=lambda: version[0])
    ahead = BatchesAhead(source, staleness=2, last_iteration=5, in_flight=True)
    seen = []
    for it in range(1, 6):
        items, _ = ahead.take(it, version[0], now_by(source, lambda: version[0]))
        ahead.settle()  # this test's source is quick: every batch handed out is generated before the update
        seen.append((it, batch_staleness(items, version[0]), [a.iteration for a in ahead.pending]))
        version[0] += 1  # the update after training on it
    # batch 1 now, in this thread; then 2 and 3 ahead; each take hands out one more, never past the last
    assert source.calls[0] == (1, 0, True)
    assert [c[:2] for c in source.calls[1:]] == [(2, 1), (3, 2), (4, 3), (5, 4)]  # trained_at: the version that trains it
    assert not any(c[2] for c in source.calls[1:])
    assert [s[2] for s in seen] == [[2, 3], [3, 4], [4, 5], [5], []]
    # batch j began at version j - 1 - 2 (or 0) and trains at version j - 1
    assert [s[1] for s in seen] == [0, 1, 2, 2, 2]
    assert ahead.dropped == 0
    ahead.close()


def test_a_batch_staler_than_k_is_dropped_counted_and_sampled_again():
    source = ScriptedSource(started_at=lambda it: 0 if it == 2 else it - 1)
    ahead = BatchesAhead(source, staleness=1, last_iteration=3, in_flight=True)
    ahead.take(1, 0, now_by(source, lambda: 0))
    ahead.settle()
    # batch 2 was begun by version 0; trained at version 2 it is 2 versions late (> k = 1)
    items, metrics = ahead.take(2, 2, lambda it, after=None: ([rollout(2)], {"again": 1.0}))
    assert ahead.dropped == 1 and items[0].version == 2 and metrics == {"again": 1.0}
    assert batch_staleness([rollout(3), rollout(1)], 4) == 3 and batch_staleness([{"row": 1}], 4) is None
    ahead.close()


def test_a_batch_that_met_a_dead_actor_is_sampled_again_from_the_source_state_before_it():
    source = ScriptedSource(fail={2})
    ahead = BatchesAhead(source, staleness=2, last_iteration=4, in_flight=True)
    ahead.take(1, 0, now_by(source, lambda: 0))  # hands out 2 (fails) and 3
    ahead.settle()
    assert source.drawn == 3
    again = []
    items, _ = ahead.take(2, 1, lambda it, after=None: (again.append((it, after, source.drawn)), ([rollout(1)], {}))[1])
    # every batch ahead was given up, the source went back to before batch 2, then batch 2 was sampled now
    assert again and again[0][0] == 2 and type(again[0][1]).__name__ == "RayActorError" and again[0][2] == 1
    assert [a.iteration for a in ahead.pending] == [3, 4]  # handed out again after it
    ahead.close()


def test_checkpointed_batches_come_back_in_order_and_are_taken_first():
    source = ScriptedSource()
    ahead = BatchesAhead(source, staleness=2, last_iteration=6, in_flight=False)
    ahead.take(1, 0, now_by(source, lambda: 0))
    saved = ahead.finished()
    assert [m["drawn_before"] for _, m in saved] == [1.0, 2.0]
    ahead.close()
    resumed_source = ScriptedSource()
    resumed_source.drawn = 3  # the source's state in the checkpoint: after every batch ahead drew its prompts
    resumed = BatchesAhead(resumed_source, staleness=2, last_iteration=6, in_flight=False)
    resumed.restore(2, saved)
    _, metrics = resumed.take(2, 1, now_by(resumed_source, lambda: 1))
    assert metrics["drawn_before"] == 1.0
    _, metrics = resumed.take(3, 2, now_by(resumed_source, lambda: 2))
    assert metrics["drawn_before"] == 2.0
    resumed.settle()
    assert [c[0] for c in resumed_source.calls] == [4, 5]  # only batches after the checkpointed ones are sampled
    resumed.close()


def test_between_batches_an_update_waits_for_the_batch_in_generation_and_the_next_batch_for_it():
    events, release = [], threading.Event()

    class SlowSource(ScriptedSource):
        def next_batch(self, iteration, trained_at):
            events.append(("start", iteration))
            if iteration == 2:
                release.wait(5)
            events.append(("end", iteration))
            return [rollout(0)], {}

    source = SlowSource()
    ahead = BatchesAhead(source, staleness=2, last_iteration=3, in_flight=False)
    ahead.take(1, 0, lambda it, after=None: ([rollout(0)], {}))  # hands out 2 (held) and 3
    while ("start", 2) not in events:
        time.sleep(0.01)
    def update():
        with ahead.update_turn():
            events.append(("update", None))

    updated = threading.Thread(target=update)
    updated.start()
    time.sleep(0.1)
    assert ("update", None) not in events  # waiting for batch 2
    release.set()
    updated.join(5)
    ahead.settle()
    assert events == [("start", 2), ("end", 2), ("update", None), ("start", 3), ("end", 3)]
    ahead.close()


def test_in_flight_updates_are_checked():
    from rlft.control.validation import check_config
    from rlft.algorithms import ALGORITHMS
    from rlft.peft import PEFT_METHODS

    def check(tmp_path, **over):
        cfg = rl_config(tmp_path, "x", **over)
        check_config(cfg, ALGORITHMS[cfg.algorithm.name], PEFT_METHODS[cfg.peft.method])

    tmp = Path("/tmp")
    with pytest.raises(ValueError, match="rollout.max_staleness=0 samples none ahead"):
        check(tmp, rollout={"in_flight_updates": True})
    with pytest.raises(ValueError, match="a request keeps the adapter it started with; set sync.weights=merged"):
        check(tmp, rollout={"in_flight_updates": True, "max_staleness": 2}, sync={"weights": "adapter"})
    check(tmp, rollout={"in_flight_updates": True, "max_staleness": 2}, sync={"weights": "merged"})


# ----------------------------------------------------------------- a real engine
def test_weights_load_while_requests_are_in_flight_and_each_token_keeps_its_version(tmp_path):
    """The stepped engine samples exactly what LLM.generate samples (same seeds); a dense update landing
    mid-generation leaves every token sampled before it as the old weights sampled it (log-probs equal to
    a run without the update) and the first token after it sampled by the new weights (its log-prob moved)."""
    from safetensors.torch import load_file

    from rlft.data.models import resolve_model
    from rlft.roles.generator import GeneratorActor
    from rlft.sync.payload import DensePayload

    cfg = rl_config(tmp_path, "stepped", generator={"count": 1, "kv_cache_mb": 64},
                    rollout={"max_staleness": 1, "in_flight_updates": True})
    path = str(resolve_model(cfg.model))
    prompts = [[4 + (i + j) % 90 for j in range(10)] for i in range(3)]
    actor = GeneratorActor(cfg, 0, path, "float32", None, seed=0)
    actor.setup()
    try:
        stepped, actor.stepped = actor.stepped, None  # LLM.generate on the same engine
        reference = actor.generate(prompts, 2, 96, 1.0, 1.0, seed=7)
        actor.stepped = stepped
        same = actor.generate(prompts, 2, 96, 1.0, 1.0, seed=7)
        for ref, got in zip(reference, same):
            assert [s["completion_ids"] for s in got] == [s["completion_ids"] for s in ref]
            for s, r in zip(got, ref):
                assert s["versions"] == [0] * len(s["completion_ids"]) and s["version"] == 0
                assert max(abs(a - b) for a, b in zip(s["logprobs"], r["logprobs"])) < 1e-5
        torch.manual_seed(0)
        moved = {k: v + 0.05 * torch.randn_like(v) for k, v in load_file(str(Path(path) / "model.safetensors")).items()}
        payload = DensePayload.build(1, moved)
        out = {}
        sampling = threading.Thread(target=lambda: out.update(r=actor.generate(prompts, 2, 96, 1.0, 1.0, seed=7)))
        sampling.start()
        deadline = time.time() + 60
        while time.time() < deadline:  # the update lands once sampling is under way
            with actor.stepped.lock:
                if any(len(r.token_ids) >= 8 for r in actor.stepped.requests.values()):
                    break
            time.sleep(0.002)
        assert actor.load_weights(payload) == payload.fingerprint
        sampling.join(120)
        samples = [s for per_prompt in out["r"] for s in per_prompt]
        refs = [s for per_prompt in reference for s in per_prompt]
        spanning = 0
        for s, r in zip(samples, refs):
            versions = s["versions"]
            assert len(versions) == len(s["completion_ids"]) == len(s["logprobs"])
            assert versions == sorted(versions) and set(versions) <= {0, 1}
            old = versions.count(0)
            assert s["completion_ids"][:old] == r["completion_ids"][:old]
            assert max((abs(a - b) for a, b in zip(s["logprobs"][:old], r["logprobs"][:old])), default=0) < 1e-5
            if 0 < old < len(versions):
                spanning += 1
                assert abs(s["logprobs"][old] - r["logprobs"][old]) > 1e-4  # sampled by the new weights
        assert spanning >= 1, [s["versions"].count(0) for s in samples]
        assert actor.version == 1
    finally:
        actor.close()


def test_asynchronous_run_two_batches_ahead_with_in_flight_updates_stops_and_resumes(tmp_path):
    """GPPO on the tiny model, 2 batches ahead, merged weights loaded while the generators sample: every
    batch trains at most 2 versions after the one that began it, each sync is verified (fingerprints, the
    parity probe run beside sampling), and a stop after iteration 2 checkpoints the 2 batches generated
    ahead, which the resumed run trains on (their prompts are not drawn again)."""
    import json

    from rlft.control import Controller
    from rlft.control.checkpoints import BATCH_FILE, RESUME_DIR
    from rlft.control.resume import RunStopped
    from tests.test_resume import StopAfter

    def make(name, **extra):
        return rl_config(tmp_path, name, rollout={"max_staleness": 2, "in_flight_updates": True, "max_new_tokens": 48},
                         sync={"weights": "merged", "parity_every": 1}, train={"steps": 4, "grad_clip": 1.0},
                         eval={"num_examples": 0}, **extra)

    StopAfter.at = 2
    with pytest.raises(RunStopped):
        StopAfter(make("async"), show_progress=False).run()
    run_dir = make("async").run_dir
    saved = json.loads((run_dir / "checkpoints" / "step_2" / RESUME_DIR / BATCH_FILE).read_text())["batches"]
    assert len(saved) == 2  # batches 3 and 4, sampled while iterations 1-2 trained
    assert all(r["version"] <= 2 for batch in saved for r in batch["items"])
    summary = Controller(make("async", resume="auto"), show_progress=False).run()
    assert summary["policy_version"] == 4
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/loss" in r]
    assert [r["sync/version"] for r in trained] == [1, 2, 3, 4]
    assert all(0 <= r["rollout/staleness"] <= 2 for r in trained)
    assert [r["rollout/staleness"] for r in trained][:2] == [0, 1]  # batch 2 began under version 0
    assert all(r["rollout/dropped_batches"] == 0 for r in trained)
    assert all(r["sync/parity_max_abs_diff"] < 1e-3 for r in trained)
    # the resumed run trained on the checkpointed batches: the same scored rewards, logged again
    assert [r["reward/mean"] for r in trained[2:]] == pytest.approx([b["metrics"]["reward/mean"] for b in saved])
