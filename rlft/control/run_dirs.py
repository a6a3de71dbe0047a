"""Run folders: where a run writes, and the mark of a run that finished.

A run folder is never destroyed by default: with `run.if_exists: new` (the default) a run whose
folder already holds a run goes to `<name>-2`, `<name>-3`, ...; `error` refuses; `overwrite`
reuses the folder and replaces its metrics and samples. A run that ends writes its summary to
`finished.json` (FINISHED), which tells `resume=auto` there is nothing left to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rlft.samples import SAMPLES_FILE

log = logging.getLogger("rlft.runs")  # the name its lines have always carried in train.log

FINISHED = "finished.json"


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
