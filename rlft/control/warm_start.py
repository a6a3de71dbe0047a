"""Warm starts, and the base model a run starts from.

A warm start (`warm_start.recipe`) is an SFT recipe run first; its final full checkpoint is the
base model of the run. A folder holding a finished warm start of the same recipe and overrides
is reused, so `rlft eval` and a second run find the same base.

Only the control layer runs a warm start: the controller's set-up hands `base_model_path` its own
`train` (rlft.control.controller), and a warm start is then a run like any other. Without `train`,
a warm start that has not run is an error that says to run it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from rlft.control.run_dirs import candidate_dirs
from rlft.peft import PEFT_METHODS

log = logging.getLogger("rlft.runs")  # the name its lines have always carried in train.log

WARM_START_STAMP = "warm_start.json"


def warm_start_config(cfg):
    from rlft.config import load_config

    ws = cfg.warm_start
    overrides = [*ws.overrides, f"run.output_dir={cfg.run.output_dir}"]
    sub = load_config(ws.recipe, overrides)
    if not PEFT_METHODS[sub.peft.method].produces_full_model:
        full = "|".join(name for name in PEFT_METHODS if PEFT_METHODS[name].produces_full_model)
        raise ValueError(f"warm_start.recipe {ws.recipe}: needs peft.method={full} to produce a base model")
    stamp = {"recipe": Path(ws.recipe).read_text(), "overrides": overrides}
    return sub, stamp


def find_warm_start(cfg) -> Path | None:
    """The final checkpoint of a finished warm start of this recipe and overrides, if any."""
    sub, stamp = warm_start_config(cfg)
    for folder in candidate_dirs(sub.run_dir):
        if not folder.exists():
            return None
        marker = folder / WARM_START_STAMP
        final = folder / "checkpoints" / "final"
        if marker.is_file() and json.loads(marker.read_text()) == stamp and (final / "config.json").is_file():
            return final.resolve()


def base_model_path(cfg, train: Callable[..., dict[str, Any]] | None = None, show_progress: bool = True) -> Path:
    """Absolute path of the model a run starts from: the warm start's checkpoint, or model.name.

    A warm start not found is run with `train` (rlft.control.train, called as train(cfg,
    show_progress=...)) and stamped so that the next run finds it; with no `train`, it is an error.
    """
    from rlft.data.models import resolve_model

    if cfg.warm_start.recipe is None:
        return resolve_model(cfg.model).resolve()
    found = find_warm_start(cfg) if cfg.warm_start.reuse else None
    if found is not None:
        log.info("reusing warm start %s", found)
        return found
    if train is None:
        raise FileNotFoundError(
            f"no finished warm start of {cfg.warm_start.recipe} under {cfg.run.output_dir}: run the recipe "
            "first (rlft train) so the base model exists"
        )
    sub, stamp = warm_start_config(cfg)
    sub.runtime.log_level = cfg.runtime.log_level  # it shows what the run shows (not part of the stamp)
    log.info("warm start: running %s", cfg.warm_start.recipe)
    summary = train(sub, show_progress=show_progress)
    (Path(summary["run_dir"]) / WARM_START_STAMP).write_text(json.dumps(stamp))
    return (Path(summary["run_dir"]) / "checkpoints" / "final").resolve()
