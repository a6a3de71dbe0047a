"""Checkpoint folders: written atomically, found again for `resume=auto`, pruned by retention.

    <run>/checkpoints/step_<N>/     the policy as users load it (adapter or full HF folder)
        resume/                     what exact resume needs: state.json (the controller's step,
                                    policy version, data order, eval base, wandb run id), the
                                    learner ranks' state (rlft.roles.learner_state) and, with
                                    rollout.max_staleness >= 1, the batches generated ahead
        COMPLETE                    written last: a folder without it is not a checkpoint

A checkpoint is written under `checkpoints/.partial-<tag>/` and renamed into place when complete,
so a killed write never leaves a folder that looks complete. Everything is safetensors or JSON.
Writing one from a run and loading one into fresh roles: rlft.control.resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rlft.control.run_dirs import FINISHED, candidate_dirs
from rlft.types import Example, Rollout, Score, Segment

log = logging.getLogger("rlft.checkpoints")  # the name its lines have always carried in train.log

COMPLETE = "COMPLETE"
RESUME_DIR = "resume"
STATE_FILE = "state.json"
BATCH_FILE = "next_batch.json"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def partial_dir(run_dir: Path, tag: str) -> Path:
    """Where a checkpoint is written before it is complete (any leftover is from a killed write)."""
    folder = checkpoints_dir(run_dir) / f".partial-{tag}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def commit(run_dir: Path, tag: str, written: Path) -> Path:
    """Mark `written` complete and move it to checkpoints/<tag>. An existing folder of that name
    (from a run resumed at an earlier step) is kept aside, never deleted."""
    (written / COMPLETE).write_text(json.dumps({"time": time.time()}))
    target = checkpoints_dir(run_dir) / tag
    if target.exists():
        aside = target.with_name(f"{tag}.superseded-{int(time.time())}")
        log.warning("%s exists (written before this run resumed at an earlier step): moved to %s", target, aside)
        os.replace(target, aside)
    os.replace(written, target)
    return target


def step_of(folder: Path) -> int | None:
    name = folder.name
    if name.startswith("step_") and name[5:].isdigit():
        return int(name[5:])
    return None


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints that can be resumed from, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [f for f in root.iterdir() if step_of(f) is not None and (f / COMPLETE).is_file()
             and (f / RESUME_DIR / STATE_FILE).is_file()]
    return sorted(found, key=step_of)


def prune(run_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest `keep_last` complete step checkpoints (None: keep every one)."""
    if not keep_last:
        return []
    old = complete_checkpoints(run_dir)[:-keep_last]
    for folder in old:
        shutil.rmtree(folder)
    return old


# ----------------------------------------------------------------- the controller's state
def write_state(folder: Path, state: dict[str, Any], batches_ahead: list[tuple[list, dict]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
    if batches_ahead:
        (folder / BATCH_FILE).write_text(json.dumps({"batches": [
            {"items": [rollout_to_json(r) for r in items], "metrics": metrics} for items, metrics in batches_ahead]}))


def read_state(folder: Path) -> tuple[dict[str, Any], list[tuple[list, dict]]]:
    """The controller's state and the batches generated ahead, oldest first (a checkpoint written before
    rollout.max_staleness could exceed 1 holds one batch, at the top level of the file)."""
    state = json.loads((folder / STATE_FILE).read_text())
    batch_path = folder / BATCH_FILE
    if not batch_path.is_file():
        return state, []
    raw = json.loads(batch_path.read_text())
    return state, [([rollout_from_json(r) for r in batch["items"]], batch["metrics"])
                   for batch in raw.get("batches", [raw])]


def rollout_to_json(rollout: Rollout) -> dict:
    if not isinstance(rollout, Rollout):
        raise TypeError(f"only rollouts can be generated ahead and checkpointed, not {type(rollout).__name__}")
    return dataclasses.asdict(rollout)


def rollout_from_json(raw: dict) -> Rollout:
    raw = dict(raw)
    raw["example"] = Example(**raw["example"])
    raw["segments"] = [Segment(**s) for s in raw["segments"]]
    raw["score"] = Score(**raw["score"]) if raw["score"] is not None else None
    return Rollout(**raw)


# ----------------------------------------------------------------- finding what to resume
def newest_run_folder(run_dir: Path) -> Path | None:
    """The folder the newest run of this name wrote to: <name>, or the highest <name>-N."""
    newest = None
    for folder in candidate_dirs(Path(run_dir)):
        if not folder.exists():
            return newest
        newest = folder
    return newest


def find_resume_point(run_dir: Path) -> tuple[Path, Path | None, bool]:
    """(run folder, newest complete step checkpoint or None, whether that run finished)."""
    folder = newest_run_folder(run_dir)
    if folder is None:
        return Path(run_dir), None, False
    found = complete_checkpoints(folder)
    return folder, (found[-1] if found else None), (folder / FINISHED).is_file()
