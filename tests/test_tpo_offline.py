"""Offline TPO from ranked lists: the arith lists builder, the `lists` source and its errors, a run.

The loss itself is tested in tests/test_tpo.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from rlft.algorithms import ALGORITHMS
from rlft.control import Controller, train
from rlft.data.arith import ArithConfig, ArithTask
from rlft.data.arith_lists import branch_prefixes, build_lists
from rlft.data.model_config import ModelConfig
from rlft.data.models import resolve_model
from rlft.roles import ROLES
from tests.helpers import tiny_config, two_source_steps

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _tpo_config(tmp_path, lists_path, **sections):
    algorithm = {"name": "tpo_offline", "path": str(lists_path), "list_size": 4, **sections.pop("algorithm", {})}
    train = {"steps": 2, "batch_size": 8, "micro_batch_size": 4, "lr": 1e-2, **sections.pop("train", {})}
    return tiny_config(tmp_path, "tpo", algorithm=algorithm, peft={"method": "lora", "r": 4}, train=train, **sections)


class NeverStarted:
    def __init__(self, *args, **kwargs):
        raise AssertionError("a role was started")


def test_bad_lists_row_names_file_and_line_before_any_role_starts(tmp_path):
    """Malformed rows (read by the algorithm's checks) and prompts too long for train.max_length
    (checked by the source with the tokenizer) stop the run before a role starts or a run folder is made."""
    ROLES["learner"].register("never", NeverStarted, replace=True)
    try:
        good = {"prompt": "Q: 1+2\n", "responses": ["A: 3", "A: 4"], "scores": [1, 0]}
        cases = [({**good, "scores": [1, "high"]}, r"lists.jsonl:3: 'scores'\[1\] must be a finite number"),
                 ({**good, "responses": ["A: 3"] * 5, "scores": [0] * 5}, r"lists.jsonl:3: 5 responses, more than "
                                                                           r"algorithm.list_size=4"),
                 ({**good, "prompt": "Q: " + "1+" * 40 + "2\n"}, r"lists.jsonl:3: prompt of 85 tokens \+ 1 more "
                                                                   r"does not fit train.max_length \(64\)")]
        for bad, message in cases:
            path = _write(tmp_path / "lists.jsonl", [good, "", bad])
            cfg = _tpo_config(tmp_path, path, runtime={"roles": {"learner": "never"}})
            with pytest.raises(ValueError, match=message):
                Controller(cfg, show_progress=False).run()
            assert not (tmp_path / "runs" / "tpo").exists()
    finally:
        ROLES["learner"].unregister("never")


def test_batch_sizes_must_hold_whole_lists(tmp_path):
    path = _write(tmp_path / "lists.jsonl", build_lists(2, 4))
    cfg = _tpo_config(tmp_path, path, algorithm={"list_size": 3})
    with pytest.raises(ValueError, match="train.batch_size=8 is not a multiple of algorithm.list_size=3"):
        ALGORITHMS["tpo_offline"].validate(cfg)


def test_arith_lists_builder_reproduces_the_recipe_file_and_ranks_the_worked_trace_first():
    """configs/data/tpo_arith_lists.jsonl is `python -m rlft.data.arith_lists --out ... --lists 1024
    --start 352`; every list starts with the correct worked trace (score 1), the rest are wrong."""
    rows = build_lists(1024, 4, start=352)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    assert (ROOT / "configs" / "data" / "tpo_arith_lists.jsonl").read_text() == text
    task = ArithTask(ArithConfig(train_size=352 + 1024))
    for row, example in zip(rows, task.split("train")[352:]):
        assert row["prompt"] == example.prompt and row["responses"][0] == example.response
        assert row["scores"][0] == 1.0 and max(row["scores"][1:]) < 1.0 and len(set(row["responses"])) == 4
        assert all(task.score(example, r) == 0.0 for r in row["responses"][1:])
    held_out = {e.prompt for e in task.split("eval")}
    assert not held_out & {r["prompt"] for r in rows}


def test_arith_branch_lists_continue_prefixes_of_the_worked_trace():
    """--policy: every other response is the worked trace's first k lines (k < all, replayed here from
    the seed) plus a sampled continuation, scored by the step checker; sampling is seeded."""
    model = str(resolve_model(ModelConfig(name="tiny")))
    rows = build_lists(3, 4, start=10, seed=1, policy=model)
    task = ArithTask(ArithConfig(train_size=13))
    rng = random.Random(1)
    for row, example in zip(rows, task.split("train")[10:]):
        lines = example.response.split("\n")
        prefixes = branch_prefixes(example, 3, rng)
        assert all(p.count("\n") < len(lines) and example.response.startswith(p) for p in prefixes)
        assert row["responses"][0] == example.response and row["scores"][0] == 1.0
        for response, prefix, value in zip(row["responses"][1:], prefixes, row["scores"][1:]):
            assert response.startswith(prefix)
            steps = task.step_scores(example, response)
            assert value == round(sum(steps) / len(steps), 4)
    assert rows == build_lists(3, 4, start=10, seed=1, policy=model)


def test_offline_run_end_to_end_on_the_tiny_model(tmp_path):
    """Inline mode, LoRA (the reference is the base with the adapter off), ASR on: two optimizer steps on
    ranked arith lists, then greedy eval on the held-out split; the first step starts at pi_theta = pi_ref."""
    path = _write(tmp_path / "lists.jsonl", build_lists(8, 4, start=100))
    summary = train(_tpo_config(tmp_path, path), show_progress=False)
    assert summary["steps"] == 2 and summary["eval/accuracy"] is not None
    rows = [json.loads(line) for line in (tmp_path / "runs" / "tpo" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/loss" in r]
    assert len(trained) == 2 and all(r["train/loss"] > 0 for r in trained)
    assert trained[0]["train/reward_margin"] == 0.0  # step 1: the adapter is zero, every reward is 0
    assert trained[1]["train/reward_margin"] > 0.0  # the update moved the ranking the right way
    assert {"train/pair_accuracy", "train/ndcg"} <= set(trained[0])


def test_tpo_update_two_ranks_equal_one_rank(tmp_path):
    """Two optimizer steps on lists of 4 (ASR on, LoRA): 1 rank x 2 micro-batches of one list each equals
    2 ranks x 1 micro-batch in loss, metric sums, gradient norm and adapter weights."""
    path = _write(tmp_path / "lists.jsonl", build_lists(8, 4, start=100))
    train = {"batch_size": 8, "micro_batch_size": 4, "lr": 1e-2, "grad_clip": 0.0}
    one, one_state = two_source_steps(_tpo_config(tmp_path, path, train=train, run={"name": "one"}))
    two, two_state = two_source_steps(_tpo_config(tmp_path, path, train=train, run={"name": "two"},
                                                  runtime={"mode": "local"}, learner={"count": 2}))
    assert one[1]["margin_sum"] != 0.0, "the second step should start off pi_ref"
    for a, b in zip(one, two):
        for key in ("loss", "pairs", "correct_pairs", "margin_sum", "ndcg_sum", "best_nll_sum", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    for name in one_state:
        torch.testing.assert_close(two_state[name], one_state[name], atol=1e-5, rtol=1e-4)
