"""Rollouts a person can read: a few per logged step, in <run>/samples.jsonl and a wandb Table.

At every step that logs metrics (`train.log_every`, and the last one) the controller hands the
step's scored rollouts to `SampleLog.write`, which keeps `train.log_samples` of them. Which ones
follows from the run seed, the step and the source alone, drawn with a private `random.Random`:
the random streams that training uses are never touched, so a resumed run stays exact and picks
the same rollouts again. Items that are not rollouts (SFT examples, DRAKES seeds) give no samples.

One JSON object per line (`build_record`), appended and flushed as it is written. A run never
truncates it (only a new run with run.if_exists=overwrite starts it afresh): a run resumed from the
checkpoint at step k logs the steps after k a second time, and readers keep the newest record per
(source, step, index) (`latest`). Records by kind:

  completion  prompt and completion text
  episode     also `turns`: the model's turns and the environment's observations, in order
  sequence    a diffusion sample (no tokens): `sequence`; its rewards are the oracles' scores
              (DRAKES samples inside the learners' loss, so its samples are the evaluation
              sequences, source "eval", written at every evaluation)
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Iterable

from rlft.data.jsonl import DataError
from rlft.types import Rollout

SAMPLES_FILE = "samples.jsonl"
TABLE_KEY = "samples"  # the wandb Table's key
HOW_TO_TURN_ON = ("runs that sample rollouts write it every train.log_every steps while train.log_samples > 0 "
                  "(runs on a dataset, such as SFT, have none)")


def choose(count: int, total: int, seed: int, step: int, source: str = "train") -> list[int]:
    """`count` of `total` indices (all when there are fewer), ascending; the same for the same seed,
    step and source in any process (string seeds hash with SHA-512, not Python's salted hash)."""
    if count >= total:
        return list(range(total))
    return sorted(random.Random(f"rlft-samples:{seed}:{source}:{step}").sample(range(total), count))


def record_kind(rollout: Rollout) -> str:
    """sequence: no token ids (a diffusion model's sample is its text); episode: it has turns."""
    if not rollout.prompt_ids and not rollout.completion_ids:
        return "sequence"
    if any(s.kind in ("turn", "observation") for s in rollout.segments):
        return "episode"
    return "completion"


def episode_turns(rollout: Rollout) -> list[dict[str, Any]]:
    """The model's turns and the observations between them, in order, with their token counts."""
    return [{"kind": s.kind, "text": s.text, "tokens": s.end - s.start}
            for s in rollout.segments if s.kind in ("turn", "observation")]


def build_record(rollout: Rollout, *, step: int, iteration: int, index: int, learner_version: int,
                 source: str = "train") -> dict[str, Any]:
    """One rollout as a JSON-ready record. `learner_version`: the policy version the learners held
    when they trained on it (staleness = that minus the version that sampled it)."""
    kind = record_kind(rollout)
    score = rollout.score
    record: dict[str, Any] = {
        "source": source, "step": step, "iteration": iteration, "index": index, "group": rollout.group,
        "kind": kind, "prompt": rollout.example.prompt, "answer": rollout.example.answer,
        "reward": score.reward if score else None, "rewards": dict(score.components) if score else {},
        "correct": score.correct if score else None,
        "length": len(rollout.text) if kind == "sequence" else len(rollout.completion_ids),
        "finish_reason": rollout.finish_reason, "version": rollout.version,
        "learner_version": learner_version, "staleness": learner_version - rollout.version,
    }
    if kind == "sequence":
        record["sequence"] = rollout.text
    else:
        record["completion"] = rollout.text
    if kind == "episode":
        record["turns"] = episode_turns(rollout)
    return record


def table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the wandb Table: the fixed fields, then one `reward/<name>` per component."""
    components = sorted({name for r in records for name in r["rewards"]})
    fixed = ["step", "source", "index", "group", "kind", "prompt", "completion", "answer", "reward", "correct",
             "length", "version", "staleness", "finish_reason"]
    rows = [[r.get("completion", r.get("sequence")) if key == "completion" else r[key] for key in fixed]
            + [r["rewards"].get(name) for name in components] for r in records]
    return fixed + [f"reward/{name}" for name in components], rows


class SampleLog:
    """Writes the chosen rollouts of a step to <run_dir>/samples.jsonl and to the tracker's wandb run."""

    def __init__(self, run_dir: Path, count: int, seed: int, tracker=None):
        """tracker: anything with `log_table(key, columns, rows, step)` (rlft.tracking.Tracker), or None."""
        self.path = Path(run_dir) / SAMPLES_FILE
        self.count, self.seed, self.tracker = count, seed, tracker

    def write(self, items: list, step: int, iteration: int, learner_version: int,
              source: str = "train") -> list[dict[str, Any]]:
        """Choose, record and write `count` of the step's rollouts; the records written."""
        rollouts = [item for item in items if isinstance(item, Rollout)]
        if not self.count or not rollouts:
            return []
        records = [build_record(rollouts[i], step=step, iteration=iteration, index=i,
                                learner_version=learner_version, source=source)
                   for i in choose(self.count, len(rollouts), self.seed, step, source)]
        now = time.time()
        with self.path.open("a") as f:  # closed, so flushed, after every step
            f.write("".join(json.dumps({**r, "time": now}) + "\n" for r in records))
        if self.tracker is not None:
            self.tracker.log_table(TABLE_KEY, *table(records), step=step)
        return records


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of a run's samples.jsonl, in file order. A last line cut short (a run killed while
    writing) is skipped; any other bad line is a DataError naming it."""
    path = Path(run_dir) / SAMPLES_FILE
    if not path.is_file():
        where = "" if Path(run_dir).is_dir() else f" ({run_dir} is not a folder)"
        raise FileNotFoundError(f"{path}: no samples{where}; {HOW_TO_TURN_ON}")
    text = path.read_text()
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    return records


def latest(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record per (source, step, index): a resumed run's rewrite of a step replaces the
    first one. Ordered by step, then source, then index."""
    newest = {(r["source"], r["step"], r["index"]): r for r in records}
    return sorted(newest.values(), key=lambda r: (r["step"], r["source"], r["index"]))


def select(records: Iterable[dict[str, Any]], last: int, correct: bool | None = None,
           step: int | None = None) -> list[dict[str, Any]]:
    """The `last` newest of `latest(records)` at `step` (None: any) whose verdict is `correct` (None: any)."""
    kept = [r for r in latest(records)
            if (step is None or r["step"] == step) and (correct is None or r["correct"] is correct)]
    return kept[-last:] if last > 0 else []
