"""Samples a person can read (rlft.samples, rlft.samples_view, `rlft samples`): records built from
hand-made rollouts of each kind, the seeded choice, the JSONL file across a resume, and the command's
filters. That a run writes them is checked on the fake-role controller run (tests/test_controller.py)."""

from __future__ import annotations

import json
import random

import pytest

from rlft.cli import main
from rlft.data.jsonl import DataError
from rlft.samples import SAMPLES_FILE, SampleLog, build_record, choose, latest, read_samples, select
from rlft.types import Example, Rollout, Score, Segment

QUESTION = Example(prompt="What is 12 + 30?", response=None, answer="42")


def completion(text: str, correct: bool, version: int = 3, group: int = 0) -> Rollout:
    return Rollout(QUESTION, group, prompt_ids=[1, 2, 3], completion_ids=[5] * len(text.split()),
                   logprobs=[-0.1] * len(text.split()), text=text, version=version, finish_reason="stop",
                   score=Score(reward=float(correct) + 0.25, correct=correct,
                               components={"answer": float(correct), "format": 0.5}))


def episode() -> Rollout:
    """search (4 tokens) -> observation (6) -> answer (3), as rlft.retrieval.episodes builds it."""
    turns = [("turn", "<search>tesk</search>", 4), ("observation", "<docs>Bavo lives in Tesk.</docs>", 6),
             ("turn", "<answer>Tesk</answer>", 3)]
    segments, start = [], 0
    for kind, text, n in turns:
        segments.append(Segment(start, start + n, kind, text))
        start += n
    return Rollout(Example("Where does Bavo live?", None, "Tesk"), 1, [1, 2], [7] * start, [-0.2] * start,
                   "".join(t for _, t, _ in turns), version=2, finish_reason="answer", segments=segments,
                   score=Score(reward=1.0, correct=True, components={"answer_f1": 1.0, "progress": 0.5}))


def diffusion_sample() -> Rollout:
    """What the mdlm family's evaluation scores: a sequence as text, no tokens, oracle components."""
    return Rollout(Example("", None, "HepG2"), 0, [], [], [], "ACGTTGCA", version=5,
                   score=Score(reward=2.5, correct=False, components={"dna_oracle": 2.5}))


def test_a_completion_record_has_every_field_a_reader_needs():
    r = build_record(completion("the answer is 42", True), step=6, iteration=3, index=2, learner_version=4)
    assert r == {"source": "train", "step": 6, "iteration": 3, "index": 2, "group": 0, "kind": "completion",
                 "prompt": "What is 12 + 30?", "answer": "42", "reward": 1.25, "rewards": {"answer": 1.0, "format": 0.5},
                 "correct": True, "length": 4, "finish_reason": "stop", "version": 3, "learner_version": 4,
                 "staleness": 1, "completion": "the answer is 42"}


def test_an_episode_record_keeps_turns_and_observations_in_order():
    r = build_record(episode(), step=1, iteration=1, index=0, learner_version=2)
    assert r["kind"] == "episode" and r["staleness"] == 0 and r["length"] == 13
    assert [(t["kind"], t["tokens"]) for t in r["turns"]] == [("turn", 4), ("observation", 6), ("turn", 3)]
    assert r["turns"][1]["text"] == "<docs>Bavo lives in Tesk.</docs>"


def test_a_diffusion_record_is_a_sequence_with_its_oracle_scores():
    r = build_record(diffusion_sample(), step=25, iteration=25, index=7, learner_version=5, source="eval")
    assert r["kind"] == "sequence" and r["sequence"] == "ACGTTGCA" and "completion" not in r
    assert r["rewards"] == {"dna_oracle": 2.5} and r["length"] == 8 and r["source"] == "eval"


def test_an_unscored_rollout_records_no_verdict():
    rollout = completion("x", True)
    rollout.score = None
    r = build_record(rollout, step=1, iteration=1, index=0, learner_version=3)
    assert r["reward"] is None and r["correct"] is None and r["rewards"] == {}


def test_the_choice_depends_on_seed_and_step_only_and_leaves_the_global_rng_alone():
    state = random.getstate()
    first = choose(4, 16, seed=0, step=1)
    assert random.getstate() == state  # training's streams are untouched
    assert first == [7, 9, 14, 15]  # golden: string seeds hash with SHA-512, the same in every process
    assert choose(4, 16, seed=0, step=1) == first
    assert choose(4, 16, seed=0, step=2) != first and choose(4, 16, seed=1, step=1) != first
    assert choose(4, 16, seed=0, step=1, source="eval") != first
    assert choose(9, 5, seed=0, step=1) == [0, 1, 2, 3, 4] and choose(0, 5, 0, 1) == []


class FakeTracker:
    def __init__(self):
        self.tables = []

    def log_table(self, key, columns, rows, step):
        self.tables.append((key, columns, rows, step))


def test_written_samples_read_back_and_a_resumed_step_replaces_the_first_one(tmp_path):
    tracker = FakeTracker()
    log = SampleLog(tmp_path, count=2, seed=0, tracker=tracker)
    batch = [completion(f"try {i}", i % 2 == 0, group=i // 2) for i in range(6)]
    first = log.write(batch, step=1, iteration=1, learner_version=3)
    log.write(batch, step=2, iteration=2, learner_version=4)
    assert [r["index"] for r in first] == choose(2, 6, 0, 1)
    # a resumed run appends its second take of step 2; readers keep the newest
    SampleLog(tmp_path, count=2, seed=0).write([completion("again", False)] * 6, step=2, iteration=2, learner_version=4)
    records = read_samples(tmp_path)
    assert len(records) == 6 and all("time" in r for r in records)
    newest = latest(records)
    assert [(r["step"], r["index"]) for r in newest] == [(1, i) for i in choose(2, 6, 0, 1)] + [
        (2, i) for i in choose(2, 6, 0, 2)]
    assert [r["completion"] for r in newest if r["step"] == 2] == ["again", "again"]
    key, columns, rows, step = tracker.tables[0]
    assert (key, step, len(rows)) == ("samples", 1, 2)
    assert columns[-2:] == ["reward/answer", "reward/format"] and rows[0][columns.index("completion")].startswith("try")


def test_nothing_is_written_without_rollouts_or_with_log_samples_zero(tmp_path):
    SampleLog(tmp_path, count=0, seed=0).write([completion("a", True)], 1, 1, 0)
    SampleLog(tmp_path, count=4, seed=0).write([{"seed": 1}, {"seed": 2}], 1, 1, 0)  # DRAKES seeds, SFT rows
    assert not (tmp_path / SAMPLES_FILE).exists()


def test_every_kind_of_record_reaches_the_table_of_an_offline_wandb_run(tmp_path):
    pytest.importorskip("wandb")
    from rlft.tracking import Tracker

    tracker = Tracker(tmp_path, "t", {}, "offline", "rlft")
    try:
        SampleLog(tmp_path, count=4, seed=0, tracker=tracker).write(
            [completion("a", True), episode(), diffusion_sample()], step=1, iteration=1, learner_version=5)
    finally:
        tracker.finish()
    [path] = (tmp_path / "wandb").glob("offline-run-*/files/media/table/samples_*.table.json")
    logged = json.loads(path.read_text())
    columns = logged["columns"]
    assert columns[-5:] == ["reward/answer", "reward/answer_f1", "reward/dna_oracle", "reward/format", "reward/progress"]
    assert [row[columns.index("kind")] for row in logged["data"]] == ["completion", "episode", "sequence"]
    assert logged["data"][2][columns.index("completion")] == "ACGTTGCA"


def test_a_line_cut_short_at_the_end_is_skipped_and_a_bad_line_inside_is_named(tmp_path):
    good = json.dumps(build_record(completion("a", True), step=1, iteration=1, index=0, learner_version=3))
    path = tmp_path / SAMPLES_FILE
    path.write_text(good + "\n" + good[:20])
    assert len(read_samples(tmp_path)) == 1
    path.write_text(good[:20] + "\n" + good + "\n")
    with pytest.raises(DataError, match=f"{SAMPLES_FILE}:1: not valid JSON"):
        read_samples(tmp_path)


def test_select_filters_by_verdict_and_step_and_keeps_the_newest():
    records = [build_record(completion("x", i % 3 == 0), step=s, iteration=s, index=i, learner_version=3)
               for s in (1, 2, 3) for i in range(4)]
    assert [(r["step"], r["index"]) for r in select(records, last=3)] == [(3, 1), (3, 2), (3, 3)]
    assert all(r["correct"] for r in select(records, last=10, correct=True))
    assert len(select(records, last=10, correct=False)) == 6
    assert {r["step"] for r in select(records, last=10, step=2)} == {2}


def _run_folder(tmp_path):
    log = SampleLog(tmp_path, count=3, seed=0)
    log.write([completion("right 42", True), completion("wrong 41", False), completion("wrong [/b] 40", False)],
              step=1, iteration=1, learner_version=4)
    log.write([episode()], step=2, iteration=2, learner_version=3)
    return tmp_path


def test_rlft_samples_prints_panels_filtered_by_verdict(tmp_path, capsys):
    run = _run_folder(tmp_path)
    assert main(["samples", str(run), "--incorrect"]) == 0
    out = capsys.readouterr().out
    assert "wrong 41" in out and "wrong [/b] 40" in out  # texts print as written, never as markup
    assert "right 42" not in out and "Bavo" not in out
    assert "4 samples at steps 1-2; showing 2 (incorrect)" in out
    assert "What is 12 + 30?" in out and "expected answer: 42" in out and "staleness 1" in out
    assert main(["samples", str(run), "--correct", "--step", "1"]) == 0
    out = capsys.readouterr().out
    assert "right 42" in out and "wrong" not in out and "reward 1.25  (answer 1, format 0.5)" in out


def test_rlft_samples_shows_an_episode_turn_by_turn(tmp_path, capsys):
    assert main(["samples", str(_run_folder(tmp_path)), "--last", "1"]) == 0
    out = capsys.readouterr().out
    assert out.index("model turn 1 (4 tokens)") < out.index("observation (6 tokens)") < out.index("model turn 2")
    assert "Bavo lives in Tesk." in out and "ended: answer" in out and "right 42" not in out


def test_rlft_samples_names_the_missing_file_and_the_setting(tmp_path, capsys):
    assert main(["samples", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / SAMPLES_FILE}: no samples" in err and "train.log_samples" in err
