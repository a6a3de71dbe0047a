"""JSONL readers: good files round-trip, every malformed row names its file and line."""

from __future__ import annotations

import json

import pytest

from rlft.data.jsonl import (
    DataError,
    PreferencePair,
    RankedList,
    read_preference_pairs,
    read_ranked_lists,
    read_sft_rows,
)
from rlft.types import Example


def write_lines(tmp_path, lines: list[str]):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def dumps(obj) -> str:
    return json.dumps(obj)


GOOD_SFT = dumps({"prompt": "p", "response": "r"})
GOOD_PAIR = dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
GOOD_LIST = dumps({"prompt": "p", "responses": ["a", "b"], "scores": [1, 0.5]})


def test_sft_rows_round_trip_and_skip_blank_lines(tmp_path):
    rows = [
        {"prompt": "Q: 1+1\n", "response": "1+1=2\nA: 2"},
        {"prompt": "héllo", "response": "wörld", "answer": "w", "extra": 1},  # extra keys ignored
    ]
    path = write_lines(tmp_path, ["", dumps(rows[0]), "   ", dumps(rows[1])])
    examples = read_sft_rows(path)
    assert [(e.prompt, e.response, e.answer) for e in examples] == [
        ("Q: 1+1\n", "1+1=2\nA: 2", None),
        ("héllo", "wörld", "w"),
    ]
    assert all(isinstance(e, Example) for e in examples)
    # Blank lines still count: the second row sits on line 4 of the file.
    assert examples[1].meta["source"] == f"{path}:4"


def test_preference_pairs_round_trip(tmp_path):
    pairs = [PreferencePair("p1", "good", "bad"), PreferencePair("p2", "yes", "no")]
    path = write_lines(tmp_path, [dumps(p.__dict__) for p in pairs])
    assert read_preference_pairs(path) == pairs


def test_ranked_lists_round_trip(tmp_path):
    lists = [RankedList("p", ["a", "b", "c"], [1.0, 0.0, -2.5]), RankedList("q", ["x", "y"], [3.0, 3.0])]
    path = write_lines(tmp_path, [dumps(r.__dict__) for r in lists])
    got = read_ranked_lists(path)
    assert got == lists
    assert all(isinstance(s, float) for s in got[0].scores)  # ints in JSON become floats


def test_empty_file_gives_no_rows(tmp_path):
    assert read_sft_rows(write_lines(tmp_path, [""])) == []


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_sft_rows(path)


@pytest.mark.parametrize(
    "reader, bad_line, message",
    [
        (read_sft_rows, '{"prompt": "p", "response": ', "invalid JSON"),
        (read_sft_rows, "[1, 2]", "expected a JSON object, got array"),
        (read_sft_rows, '"text"', "expected a JSON object, got string"),
        (read_sft_rows, dumps({"prompt": "p"}), "missing key 'response'"),
        (read_sft_rows, dumps({"prompt": 3, "response": "r"}), "'prompt' must be a string, got number"),
        (read_sft_rows, dumps({"prompt": "p", "response": "r", "answer": None}),
         "'answer' must be a string, got null"),
        (read_preference_pairs, dumps({"prompt": "p", "chosen": "c"}), "missing key 'rejected'"),
        (read_preference_pairs, dumps({"prompt": "p", "chosen": ["c"], "rejected": "r"}),
         "'chosen' must be a string, got array"),
        (read_ranked_lists, dumps({"prompt": "p", "responses": ["a", "b"], "scores": [1.0]}),
         "'responses' has 2 items but 'scores' has 1"),
        (read_ranked_lists, dumps({"prompt": "p", "responses": ["a"], "scores": [1.0]}),
         "'responses' needs at least 2 items, got 1"),
        (read_ranked_lists, dumps({"prompt": "p", "responses": "ab", "scores": [1, 2]}),
         "'responses' must be a list, got string"),
        (read_ranked_lists, dumps({"prompt": "p", "responses": ["a", 2], "scores": [1, 2]}),
         "'responses'[1] must be a string, got number"),
        (read_ranked_lists, dumps({"prompt": "p", "responses": ["a", "b"], "scores": [1, True]}),
         "'scores'[1] must be a finite number, got boolean"),
        (read_ranked_lists, '{"prompt": "p", "responses": ["a", "b"], "scores": [1, NaN]}',
         "'scores'[1] must be a finite number, got nan"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, reader, bad_line, message):
    """Line 1 is good, line 2 blank (skipped but counted), line 3 is the bad row."""
    good_row = {read_sft_rows: GOOD_SFT, read_preference_pairs: GOOD_PAIR, read_ranked_lists: GOOD_LIST}
    good = good_row[reader]
    path = write_lines(tmp_path, [good, "", bad_line, good])
    with pytest.raises(DataError) as caught:
        reader(path)
    text = str(caught.value)
    assert text.startswith(f"{path}:3: ")
    assert message in text


def test_invalid_json_reports_column(tmp_path):
    path = write_lines(tmp_path, ['{"prompt": "p" "response": "r"}'])
    with pytest.raises(DataError, match=r":1: invalid JSON \(Expecting ',' delimiter at column 16\)"):
        read_sft_rows(path)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
