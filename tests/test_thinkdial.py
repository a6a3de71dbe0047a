"""ThinkDial modes (docs/algorithms.md#thinkdial): the arith_think task, budget-mode SFT rows, per-mode eval."""

from __future__ import annotations

import json

import pytest

from rlft.data.arith_think import ArithThinkConfig, ArithThinkTask, thinking_trace
from rlft.data.jsonl import DataError
from rlft.data.thinkdial import CONNECTIVES, MODE_PROMPTS, MODES, cut_thinking, split_thinking
from rlft.modes import act_against, format_table, mode_metrics, mode_table, write_mode_report
from rlft.types import Example


def test_full_trace_works_the_columns_then_checks_in_the_other_order():
    assert thinking_trace(47, 38) == "7+8=15\n4+3+1=8\nso 85\nwait, let me check 38+47\n8+7=15\n3+4+1=8\nyes, 85 again, all ok\n"


def test_cut_keeps_whole_lines_within_the_ratio():
    thinking = "aaaa\nbb\ncccccc\nd\n"  # 18 characters
    assert cut_thinking(thinking, 1.0) == thinking
    assert cut_thinking(thinking, 0.5) == "aaaa\nbb\n"        # 8 <= 9, adding "cccccc\n" gives 15 > 9
    assert cut_thinking(thinking, 0.3) == "aaaa\n"            # 5 <= 5.4
    assert cut_thinking(thinking, 0.25) == ""                 # 5 > 4.5: no whole line fits
    assert cut_thinking(thinking, 0.5, length=lambda s: s.count("\n")) == "aaaa\nbb\n"  # 2 of 4 lines


def test_answer_counts_only_after_the_close_tag():
    task = ArithThinkTask(ArithThinkConfig(train_size=4, eval_size=2))
    example = task.split("eval")[0]
    right = f"A: {example.answer}"
    assert task.score(example, "<think>\nx\n</think>\n" + right) == 1.0
    assert task.score(example, f"<think>\n{right}\n</think>\nA: -1") == 0.0   # the answer inside thinking
    assert task.score(example, f"<think>\n{right}") == 0.0                       # never closed


def test_eval_asks_every_held_out_pair_in_every_mode_with_only_the_prompt_differing():
    task = ArithThinkTask(ArithThinkConfig(train_size=10, eval_size=5))
    evaluation = task.split("eval")
    assert len(evaluation) == 15 and [ex.meta["mode"] for ex in evaluation[:3]] == list(MODES)
    for ex in evaluation[:3]:
        assert ex.prompt == MODE_PROMPTS[ex.meta["mode"]] + ex.meta["question"]
    train = task.split("train")
    assert {ex.meta["mode"] for ex in train} <= set(MODES)
    high_only = ArithThinkTask(ArithThinkConfig(train_size=10, eval_size=5, modes=["high"])).split("train")
    assert {ex.meta["mode"] for ex in high_only} == {"high"}


def test_bm_sft_rows_are_balanced_correct_cut_and_closed_by_the_connective():
    task = ArithThinkTask(ArithThinkConfig(train_size=60, eval_size=5, train_data="bm_sft", empty_low=0.5))
    rows = task.split("train")
    by_mode = {mode: [r for r in rows if r.meta["mode"] == mode] for mode in MODES}
    assert all(len(found) == 60 for found in by_mode.values())
    assert all(task.score(r, r.response) == 1.0 for r in rows)
    for r in rows:
        thinking, _ = split_thinking(r.response)
        full = thinking_trace(r.meta["a"], r.meta["b"])
        mode = r.meta["mode"]
        assert r.prompt == MODE_PROMPTS[mode] + r.meta["question"]
        assert thinking.endswith(CONNECTIVES[mode])
        kept = thinking[: len(thinking) - len(CONNECTIVES[mode])]
        assert full.startswith(kept) and len(kept) <= {"high": 1.0, "medium": 0.5, "low": 0.25}[mode] * len(full)
    empty = [r for r in by_mode["low"] if split_thinking(r.response)[0] == CONNECTIVES["low"]]
    assert 15 <= len(empty) <= 45  # about half of 60
    mean = {mode: sum(len(r.response) for r in found) / len(found) for mode, found in by_mode.items()}
    assert mean["high"] > mean["medium"] > mean["low"]


def test_rows_a_checker_rejects_are_dropped_and_the_modes_rebalanced():
    task = ArithThinkTask(ArithThinkConfig(train_size=10, eval_size=5))

    def answers(heads):  # every other low-mode answer wrong
        return ["A: -1" if mode == "low" and i % 2 else task.solver_answer(ex) for i, (ex, mode, _) in enumerate(heads)]

    rows = task.bm_sft_rows(answers)
    low = sum(r.meta["mode"] == "low" for r in rows)
    assert 0 < low < 10 and len(rows) == 3 * low


def test_a_train_file_row_without_a_mode_is_named(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = {"prompt": "p", "response": "r", "answer": "3", "meta": {"mode": "low", "a": 1, "b": 2}}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "meta": {"a": 1, "b": 2}}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: 'meta' must hold 'mode'"):
        ArithThinkTask(ArithThinkConfig(train_size=4, eval_size=2, train_file=str(path))).split("train")


def _examples(modes):
    return [Example("q", None, "1", {"mode": m}) for m in modes]


def test_mode_metrics_average_per_mode_and_act_matches_the_spec_by_hand():
    examples = _examples(["high", "high", "medium", "medium", "low", "low"])
    metrics = mode_metrics(examples, [True, True, True, False, True, False], [80, 100, 40, 60, 20, 30])
    assert metrics == {"eval/accuracy_high": 1.0, "eval/tokens_high": 90.0, "eval/accuracy_medium": 0.5,
                       "eval/tokens_medium": 50.0, "eval/accuracy_low": 0.5, "eval/tokens_low": 25.0}
    assert mode_metrics([Example("q", None, "1")], [True], [3]) == {}  # a task without modes
    # base high: acc 0.8, cost 100. high: 1/0.8 = 1.25; medium: .5*(.5/.8) + .5*(1-.5) = 0.5625;
    # low: .5*(.5/.8) + .5*(1-.25) = 0.6875; mean = 2.5/3
    base = {"eval/accuracy_high": 0.8, "eval/tokens_high": 100.0}
    assert act_against(metrics, base) == pytest.approx(2.5 / 3)


def test_mode_table_compares_against_the_final_high_mode_and_is_written_with_a_chart(tmp_path):
    final = {"eval/accuracy_high": 0.8, "eval/tokens_high": 100.0, "eval/accuracy_low": 0.72, "eval/tokens_low": 30.0}
    start = {"eval/accuracy_high": 0.9, "eval/tokens_high": 110.0, "eval/accuracy_low": 0.5, "eval/tokens_low": 60.0}
    rows = mode_table(final, start)
    assert [r["mode"] for r in rows] == ["high", "low"]
    assert rows[1]["accuracy_drop"] == pytest.approx(0.1) and rows[1]["token_saving"] == pytest.approx(0.7)
    assert rows[1]["tokens_start"] == 60.0
    text = write_mode_report(tmp_path, final, start)
    assert "10.0%" in text and "70.0%" in text and "ACT" in text
    assert (tmp_path / "modes.png").stat().st_size > 0
    saved = json.loads((tmp_path / "modes.json").read_text())
    # ACT of the final modes against the start's high mode (acc 0.9, 110 tokens):
    # high: 1 * 0.8/0.9 = 8/9; low: 0.5 * 0.72/0.9 + 0.5 * (1 - 30/110) = 0.4 + 4/11;
    # mean (8/9 + 2/5 + 4/11) / 2 = (440 + 198 + 180) / 990 = 409/495 ~ 0.826263
    assert saved["modes"][1]["mode"] == "low" and saved["act"] == pytest.approx(409 / 495)
    assert write_mode_report(tmp_path, {"eval/accuracy": 1.0}, None) is None
    assert "mode" in format_table(rows)
