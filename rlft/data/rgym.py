"""Any `reasoning-gym` procedural dataset, scored by the dataset's own `score_answer`.

reasoning_gym is imported when a task is built, not when this module is imported: the import
takes seconds and most runs never need it.

Quirks worth knowing:
* item i of most datasets is generated with Random(seed + i), so datasets made with seeds s
  and s + 1 share all but one item; train and eval therefore come from disjoint index ranges
  of one dataset object of size train_size + eval_size.
* scorers may give partial credit (gsm_symbolic gives 0.01 for any wrong number).
* some datasets have no oracle answer (entry["answer"] is None) and check the reply with a
  simulator instead.
* only gsm_symbolic ships a worked solution (metadata "answer_cot"); the many "solution"
  metadata keys of other datasets hold final answers, not worked traces.
"""

from __future__ import annotations

import difflib
import logging
import re
from typing import Any, Literal

from pydantic import Field

from rlft.data.gsm import ANSWER_INSTRUCTION, text_after_answer
from rlft.data.tasks import TaskSpec
from rlft.schema import Section
from rlft.types import Example

logger = logging.getLogger(__name__)

_WORKED_SOLUTION_KEY = "answer_cot"
_GSM_FINAL_LINE = re.compile(r"^####.*$", re.MULTILINE)
_RESERVED_KWARGS = ("size", "seed")


class ReasoningGymConfig(Section):
    name: Literal["reasoning_gym"] = Field("reasoning_gym", description="Task name.")
    dataset: str = Field(
        "gsm_symbolic", description="reasoning_gym dataset name (see reasoning_gym.factory.DATASETS)."
    )
    train_size: int = Field(1000, ge=0, description="Training items (dataset indices 0..train_size-1).")
    eval_size: int = Field(
        100, ge=0, description="Eval items after the train ones, minus any whose question is in train."
    )
    seed: int = Field(0, description="Seed passed to reasoning_gym.create_dataset.")
    dataset_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra dataset config passed to create_dataset (not size/seed)."
    )


def registered_datasets() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def check_dataset_name(name: str) -> None:
    """ValueError naming an unknown dataset and the closest registered names."""
    known = registered_datasets()
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        hint = f"did you mean {', '.join(repr(c) for c in close)}?"
    else:
        hint = f"known: {', '.join(known)}"
    raise ValueError(f"unknown reasoning_gym dataset {name!r}; {hint}")


def worked_response(entry: dict[str, Any]) -> str | None:
    """The dataset's worked solution with our answer line, or None when it has none."""
    solution = (entry.get("metadata") or {}).get(_WORKED_SOLUTION_KEY)
    if not isinstance(solution, str) or entry.get("answer") is None:
        return None
    steps = _GSM_FINAL_LINE.sub("", solution).strip()
    return f"{steps}\nAnswer: {entry['answer']}"


def make_example(entry: dict[str, Any], dataset_name: str, index: int) -> Example:
    answer = entry.get("answer")
    return Example(
        prompt=f"{entry['question'].strip()}\n{ANSWER_INSTRUCTION}",
        response=worked_response(entry),
        answer=None if answer is None else str(answer),
        meta={"entry": entry, "dataset": dataset_name, "index": index},
    )


class ReasoningGymTask:
    """A reasoning_gym dataset split into train and held-out eval items."""

    name = "reasoning_gym"

    def __init__(self, cfg: ReasoningGymConfig):
        check_dataset_name(cfg.dataset)
        reserved = [k for k in _RESERVED_KWARGS if k in cfg.dataset_kwargs]
        if reserved:
            raise ValueError(
                "reasoning_gym: set train_size/eval_size/seed on the task, "
                f"not {reserved} in dataset_kwargs"
            )
        import reasoning_gym

        self.cfg = cfg
        self.dataset = reasoning_gym.create_dataset(
            cfg.dataset, size=cfg.train_size + cfg.eval_size, seed=cfg.seed, **cfg.dataset_kwargs
        )
        self._splits: dict[str, list[Example]] | None = None

    def split(self, which: str) -> list[Example]:
        if which not in ("train", "eval"):
            raise ValueError(f"unknown split {which!r}; expected 'train' or 'eval'")
        if self._splits is None:
            self._splits = self._make_splits()
        return list(self._splits[which])

    def score(self, example: Example, completion: str) -> float:
        after = text_after_answer(completion)
        reply = after if after is not None else completion.strip()
        try:
            value = float(self.dataset.score_answer(answer=reply, entry=example.meta["entry"]))
        except Exception:  # a scorer choking on malformed model output means "not correct"
            logger.debug("score_answer raised on %r", reply, exc_info=True)
            return 0.0
        return min(max(value, 0.0), 1.0)

    def step_scores(self, example: Example, completion: str) -> list[float]:
        return [self.score(example, completion)]

    def _make_splits(self) -> dict[str, list[Example]]:
        # Items are generated lazily per index; eval drops repeats of a train question so the
        # held-out set is really held out (it may end up a little smaller than eval_size).
        name, size = self.cfg.dataset, self.cfg.train_size
        train = [make_example(self.dataset[i], name, i) for i in range(size)]
        seen = {ex.prompt for ex in train}
        candidates = (make_example(self.dataset[i], name, i) for i in range(size, len(self.dataset)))
        eval_ = [ex for ex in candidates if ex.prompt not in seen]
        if len(eval_) < self.cfg.eval_size:
            logger.warning(
                "reasoning_gym %s: %d of %d eval items repeat a train question and were dropped",
                name, self.cfg.eval_size - len(eval_), self.cfg.eval_size,
            )
        return {"train": train, "eval": eval_}


def build(cfg: ReasoningGymConfig) -> ReasoningGymTask:
    return ReasoningGymTask(cfg)


SPEC = TaskSpec("reasoning_gym", ReasoningGymConfig, build)
