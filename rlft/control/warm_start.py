"""Warm starts, teachers, and the base model a run starts from.

A warm start (`warm_start.recipe`) is an SFT recipe run first; its final full checkpoint is the
base model of the run. A teacher (`teacher.recipe`, on-policy distillation) is made the same way. A
folder holding a finished run of the same recipe and overrides is reused, so `rlft eval` and a
second run find the same model.

Only the control layer runs such a recipe: the controller's set-up hands `base_model_path` and
`teacher_model_path` its own `train` (rlft.control.controller), and the recipe is then a run like
any other. Without `train`, a recipe that has not run is an error that says to run it.
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


def recipe_config(section, output_dir: str, what: str = "warm_start"):
    """(the config of `section.recipe` with its overrides, the stamp a finished run of it carries)."""
    from rlft.config import load_config

    overrides = [*section.overrides, f"run.output_dir={output_dir}"]
    sub = load_config(section.recipe, overrides)
    if not PEFT_METHODS[sub.peft.method].produces_full_model:
        full = "|".join(name for name in PEFT_METHODS if PEFT_METHODS[name].produces_full_model)
        raise ValueError(f"{what}.recipe {section.recipe}: needs peft.method={full} to produce a full model")
    stamp = {"recipe": Path(section.recipe).read_text(), "overrides": overrides}
    return sub, stamp


def find_recipe_model(section, output_dir: str, what: str = "warm_start") -> Path | None:
    """The final checkpoint of a finished run of this recipe and overrides, if any."""
    sub, stamp = recipe_config(section, output_dir, what)
    for folder in candidate_dirs(sub.run_dir):
        if not folder.exists():
            return None
        marker = folder / WARM_START_STAMP
        final = folder / "checkpoints" / "final"
        if marker.is_file() and json.loads(marker.read_text()) == stamp and (final / "config.json").is_file():
            return final.resolve()


def recipe_model_path(section, cfg, train: Callable[..., dict[str, Any]] | None, show_progress: bool = True,
                      what: str = "warm_start") -> Path:
    """The final checkpoint of `section.recipe` (a warm start, a teacher): a finished run of it, or with
    `train` (rlft.control.train, called as train(cfg, show_progress=...)) a run made now and stamped so that
    the next run finds it; with no `train`, a recipe not run yet is an error."""
    found = find_recipe_model(section, cfg.run.output_dir, what) if section.reuse else None
    if found is not None:
        log.info("reusing %s %s", what.replace("_", " "), found)
        return found
    if train is None:
        raise FileNotFoundError(
            f"no finished run of {what}.recipe {section.recipe} under {cfg.run.output_dir}: run the recipe "
            "first (rlft train) so its model exists"
        )
    sub, stamp = recipe_config(section, cfg.run.output_dir, what)
    sub.runtime.log_level = cfg.runtime.log_level  # it shows what the run shows (not part of the stamp)
    log.info("%s: running %s", what.replace("_", " "), section.recipe)
    summary = train(sub, show_progress=show_progress)
    (Path(summary["run_dir"]) / WARM_START_STAMP).write_text(json.dumps(stamp))
    return (Path(summary["run_dir"]) / "checkpoints" / "final").resolve()


def base_model_path(cfg, train: Callable[..., dict[str, Any]] | None = None, show_progress: bool = True) -> Path:
    """Absolute path of the model a run starts from: the warm start's checkpoint, or model.name.

    A warm start not found is run with `train` and stamped so that the next run finds it; with no
    `train`, it is an error."""
    from rlft.data.models import resolve_model

    if cfg.warm_start.recipe is None:
        return resolve_model(cfg.model).resolve()
    return recipe_model_path(cfg.warm_start, cfg, train, show_progress)


def teacher_model_path(cfg, train: Callable[..., dict[str, Any]] | None = None, show_progress: bool = True) -> Path:
    """Absolute path of the distillation teacher: teacher.model (a folder or a model name model.name takes),
    or the final checkpoint of teacher.recipe (run now with `train` when no finished run of it exists)."""
    from rlft.data.models import resolve_model

    teacher = cfg.teacher
    if teacher.model is not None:
        return resolve_model(cfg.model.model_copy(update={"name": teacher.model})).resolve()
    if teacher.recipe is None:
        raise ValueError("the algorithm needs a teacher: set teacher.model (a model folder) or teacher.recipe "
                         "(a recipe whose final checkpoint is the teacher)")
    return recipe_model_path(teacher, cfg, train, show_progress, what="teacher")
