"""Data records and the readers for user JSONL files.

Preference pairs and ranked lists are defined here; task examples (`Example`) in `rlft.types`.

One JSON object per line; blank lines are skipped. Every problem in a row raises `DataError`
whose message starts with "<path>:<1-based line>: " so the user can jump straight to it.
Keys other than the documented ones are ignored.
"""

from __future__ import annotations

import errno
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rlft.types import Example


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred and a dispreferred response (DPO-style data)."""

    prompt: str
    chosen: str
    rejected: str
    source: str = field(default="", compare=False)  # "<path>:<line>" it was read from ("" if built in code)


@dataclass(frozen=True)
class RankedList:
    """A prompt with two or more responses and one score per response (higher is better)."""

    prompt: str
    responses: list[str]
    scores: list[float]
    source: str = field(default="", compare=False)  # "<path>:<line>" it was read from ("" if built in code)


class DataError(ValueError):
    """A malformed row in a data file; the message starts with "<path>:<line>: "."""


def read_sft_rows(path: str | os.PathLike) -> list[Example]:
    """Rows {"prompt": str, "response": str, optional "answer": str, optional "meta": object} as
    `Example`s (meta gains "source": "<path>:<line>")."""
    rows = []
    for where, obj in _objects(path):
        answer = _optional_str(obj, "answer", where)
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise DataError(f"{where}: 'meta' must be an object, got {_json_type(meta)}")
        rows.append(
            Example(
                prompt=_required_str(obj, "prompt", where),
                response=_required_str(obj, "response", where),
                answer=answer,
                meta={**meta, "source": where},
            )
        )
    return rows


def read_preference_pairs(path: str | os.PathLike) -> list[PreferencePair]:
    """Rows {"prompt": str, "chosen": str, "rejected": str}."""
    return [
        PreferencePair(
            prompt=_required_str(obj, "prompt", where),
            chosen=_required_str(obj, "chosen", where),
            rejected=_required_str(obj, "rejected", where),
            source=where,
        )
        for where, obj in _objects(path)
    ]


def read_ranked_lists(path: str | os.PathLike) -> list[RankedList]:
    """Rows {"prompt": str, "responses": [str, ...], "scores": [number, ...]}, equal lengths >= 2."""
    lists = []
    for where, obj in _objects(path):
        prompt = _required_str(obj, "prompt", where)
        responses = _required_list(obj, "responses", where, _is_str, "a string")
        scores = _required_list(obj, "scores", where, _is_finite_number, "a finite number")
        if len(responses) != len(scores):
            raise DataError(
                f"{where}: 'responses' has {len(responses)} items but 'scores' has {len(scores)}"
            )
        if len(responses) < 2:
            raise DataError(f"{where}: 'responses' needs at least 2 items, got {len(responses)}")
        lists.append(RankedList(prompt=prompt, responses=responses, scores=[float(s) for s in scores], source=where))
    return lists


def _objects(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ("<path>:<line>", object) for every non-blank line, checking it is a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "data file not found", str(path))
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {_json_type(obj)}")
            yield where, obj


def _required(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: missing key '{key}'")
    return obj[key]


def _required_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = _required(obj, key, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: '{key}' must be a string, got {_json_type(value)}")
    return value


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    return _required_str(obj, key, where) if key in obj else None


def _required_list(obj: dict[str, Any], key: str, where: str, is_item, item_kind: str) -> list:
    value = _required(obj, key, where)
    if not isinstance(value, list):
        raise DataError(f"{where}: '{key}' must be a list, got {_json_type(value)}")
    for index, item in enumerate(value):
        if not is_item(item):
            raise DataError(f"{where}: '{key}'[{index}] must be {item_kind}, got {_json_type(item)}")
    return value


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_finite_number(value: Any) -> bool:
    # bool is an int subclass in Python but `true` is not a score.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number" if math.isfinite(value) else repr(value)
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)
