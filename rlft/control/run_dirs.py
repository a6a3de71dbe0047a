"""Run folders and the base model a run starts from.

A run folder is never destroyed by default: with `run.if_exists: new` (the default) a run whose
folder already holds a run goes to `<name>-2`, `<name>-3`, ...; `error` refuses; `overwrite`
reuses the folder and replaces its metrics and samples.

A warm start (`warm_start.recipe`) is an SFT recipe run first; its final full checkpoint is the
base model of the run. A folder holding a finished warm start of the same recipe and overrides
is reused, so `rlft eval` and a second run find the same base.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rlft.control.checkpoints import FINISHED
from rlft.samples import SAMPLES_FILE

log = logging.getLogger("rlft.runs")  # the name its lines have always carried in train.log

WARM_START_STAMP = "warm_start.json"


def candidate_dirs(run_dir: Path):
    """<name>, <name>-2, <name>-3, ... (unbounded)."""
    yield run_dir
    n = 2
    while True:
        yield run_dir.with_name(f"{run_dir.name}-{n}")
        n += 1


def _in_use(folder: Path) -> bool:
    return folder.exists() and any(folder.iterdir())


def choose_run_dir(run_dir: Path, if_exists: str) -> Path:
    """The folder this run writes to, following run.if_exists; never deletes anything."""
    if not _in_use(run_dir) or if_exists == "overwrite":
        return run_dir
    if if_exists == "error":
        raise FileExistsError(
            f"{run_dir} already holds a run; pick another run.name, or set run.if_exists=new "
            "(write to a fresh <name>-N folder) or run.if_exists=overwrite"
        )
    chosen = next(d for d in candidate_dirs(run_dir) if not _in_use(d))
    log.warning("%s already holds a run: writing to %s (run.if_exists=overwrite reuses the folder)", run_dir, chosen)
    return chosen


def prepare_run_dir(run_dir: Path, if_exists: str, config_yaml: str) -> Path:
    folder = choose_run_dir(run_dir, if_exists)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").unlink(missing_ok=True)  # only ever non-empty with overwrite
    (folder / SAMPLES_FILE).unlink(missing_ok=True)
    (folder / FINISHED).unlink(missing_ok=True)  # this run has not finished (resume=auto reads it)
    (folder / "config.yaml").write_text(config_yaml)
    return folder


# ---------------------------------------------------------------- warm start
def warm_start_config(cfg):
    from rlft.config import load_config

    ws = cfg.warm_start
    overrides = [*ws.overrides, f"run.output_dir={cfg.run.output_dir}"]
    sub = load_config(ws.recipe, overrides)
    if sub.peft.method != "full":
        raise ValueError(f"warm_start.recipe {ws.recipe}: needs peft.method=full to produce a base model")
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


def base_model_path(cfg, run_warm_start: bool = True, show_progress: bool = True) -> Path:
    """Absolute path of the model a run starts from: the warm start's checkpoint, or model.name."""
    from rlft.data.models import resolve_model

    if cfg.warm_start.recipe is None:
        return resolve_model(cfg.model).resolve()
    found = find_warm_start(cfg) if cfg.warm_start.reuse else None
    if found is not None:
        log.info("reusing warm start %s", found)
        return found
    if not run_warm_start:
        raise FileNotFoundError(
            f"no finished warm start of {cfg.warm_start.recipe} under {cfg.run.output_dir}: run the recipe "
            "first (rlft train) so the base model exists"
        )
    from rlft.control.controller import train

    sub, stamp = warm_start_config(cfg)
    log.info("warm start: running %s", cfg.warm_start.recipe)
    summary = train(sub, show_progress=show_progress)
    (Path(summary["run_dir"]) / WARM_START_STAMP).write_text(json.dumps(stamp))
    return (Path(summary["run_dir"]) / "checkpoints" / "final").resolve()
