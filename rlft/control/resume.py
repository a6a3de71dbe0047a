"""Exact resume: which checkpoint a run continues from, writing step checkpoints and loading one
into fresh roles, and stopping cleanly on SIGTERM.

`resume=auto` continues the newest run of the recipe's name (`<output_dir>/<name>` or its newest
`-N` sibling) from its newest complete step checkpoint (rlft.control.checkpoints); with no
checkpoint it starts a new run, and a run that finished is left alone. `resume=<folder>` names the
checkpoint.
The resumed run must be the same recipe: any difference outside `runtime`, `tracking`, the run
folder's name and place, and `resume` is refused, naming the keys (a different batch size or
learning rate would not continue the same run).

A SIGTERM (a cluster preempting the job, `ray job stop`, `kill`) lets the current iteration end,
writes a step checkpoint, and stops the run with a message that says how to continue it. A
second SIGTERM kills as usual.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from rlft.control.checkpoints import (COMPLETE, RESUME_DIR, STATE_FILE, commit, find_resume_point, partial_dir, prune,
                                      read_state, write_state)
from rlft.control.run_dirs import FINISHED
from rlft.errors import ResumeError

log = logging.getLogger("rlft.resume")  # the name its lines have always carried in train.log

# Config keys (and sections) a resumed run may change: where and how it runs, not what it trains.
MAY_DIFFER = ("runtime.", "tracking.", "resume", "run.name", "run.output_dir", "run.if_exists")


class RunFinished(Exception):
    """resume=auto found that the newest run of this name finished; nothing to do."""

    def __init__(self, run_dir: Path, summary: dict[str, Any]):
        super().__init__(f"{run_dir} finished; nothing to resume (start a new run with resume=never)")
        self.run_dir, self.summary = run_dir, summary


class RunStopped(Exception):
    """The run stopped on a signal after writing a checkpoint it can resume from."""


@dataclass
class ResumePoint:
    run_dir: Path
    checkpoint: Path
    state: dict[str, Any]           # the controller's state (rlft.control.checkpoints.write_state)
    batches_ahead: list[tuple[list, dict]]  # generated before the stop (rollout.max_staleness >= 1), oldest first

    @property
    def learner_state(self) -> Path:
        return self.checkpoint / RESUME_DIR


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(saved_yaml: str, current: dict) -> list[str]:
    """Dotted keys whose values differ between the saved run's config and this one (sections that
    may differ left out)."""
    saved, now = _flatten(yaml.safe_load(saved_yaml) or {}), _flatten(current)
    keys = sorted(set(saved) | set(now))
    return [k for k in keys if not any(k == m or (m.endswith(".") and k.startswith(m)) for m in MAY_DIFFER)
            and saved.get(k, "<unset>") != now.get(k, "<unset>")]


def resume_point(cfg) -> ResumePoint | None:
    """What this run continues from (None: a new run). Raises RunFinished for a finished run."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        run_dir, checkpoint, finished = find_resume_point(cfg.run_dir)
        if finished:
            raise RunFinished(run_dir, json.loads((run_dir / FINISHED).read_text()))
        if checkpoint is None:
            log.warning("resume=auto: %s has no complete step checkpoint; starting a new run", run_dir)
            return None
    else:
        checkpoint = Path(cfg.resume).resolve()
        if not (checkpoint / COMPLETE).is_file() or not (checkpoint / RESUME_DIR / STATE_FILE).is_file():
            raise ResumeError(f"resume={cfg.resume}: not a complete step checkpoint (it needs {COMPLETE} and "
                              f"{RESUME_DIR}/{STATE_FILE}; the final checkpoint holds only the weights)")
        run_dir = checkpoint.parent.parent
    from rlft.config import dump_config

    saved = run_dir / "config.yaml"
    if saved.is_file():
        differ = config_differences(saved.read_text(), yaml.safe_load(dump_config(cfg)))
        if differ:
            raise ResumeError(f"cannot resume {run_dir} with another recipe: {', '.join(differ[:8])}"
                              f"{' ...' if len(differ) > 8 else ''} differ from its config.yaml (only "
                              f"{', '.join(MAY_DIFFER)} may change)")
    state, batches_ahead = read_state(checkpoint / RESUME_DIR)
    log.info("resuming %s from %s (step %d, policy version %d)", run_dir, checkpoint.name, state["step"],
             state["policy_version"])
    return ResumePoint(run_dir, checkpoint, state, batches_ahead)


class StopOnSignal:
    """While active, SIGTERM sets `requested` (the loop checkpoints and stops after its iteration)
    instead of killing the process; a second SIGTERM kills. Only the main thread can install it, and
    it is installed again after Ray starts (ray.init puts its own SIGTERM handler in place)."""

    _unset = object()

    def __init__(self):
        self.requested = False
        self._previous: Any = self._unset  # the handler before the first install

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        if self._previous is self._unset:  # None: a handler set outside Python; the default stands in
            self._previous = previous if previous is not None else signal.SIG_DFL

    def _handle(self, signum, frame) -> None:
        log.warning("SIGTERM: stopping after this iteration with a checkpoint (send it again to kill now)")
        self.requested = True
        signal.signal(signal.SIGTERM, self._previous)

    def __enter__(self) -> "StopOnSignal":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not self._unset:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = self._unset


# ----------------------------------------------------------------- writing and loading step checkpoints
def save_checkpoint(run_dir: Path, learners, tag: str, keep_last: int | None,
                    resume_state: Callable[[], tuple[dict[str, Any], list[tuple[list, dict]]]] | None = None,
                    companions: dict[str, Any] | None = None) -> Path:
    """The policy as users load it, in checkpoints/<tag>; with `resume_state`, also everything exact
    resume needs: each learner rank's state, then what `resume_state()` returns (the controller's
    state, and the batches generated ahead), asked for once the ranks wrote theirs. Written
    aside and renamed into place when complete; step checkpoints beyond `keep_last` pruned.
    `companions` (kind -> learner group, AlgorithmSpec.companions: a critic): each saves its model in
    <tag>/<kind>/ and, with `resume_state`, its ranks' state in <tag>/resume/<kind>/."""
    written = partial_dir(run_dir, tag)
    learners.call("save", str(written))
    for kind, group in (companions or {}).items():
        group.call("save", str(written / kind))
    if resume_state is not None:
        learners.call("save_state", str(written / RESUME_DIR))
        for kind, group in (companions or {}).items():
            group.call("save_state", str(written / RESUME_DIR / kind))
        write_state(written / RESUME_DIR, *resume_state())
    out = commit(run_dir, tag, written)
    for folder in prune(run_dir, keep_last):
        log.info("removed %s (train.keep_checkpoints=%d)", folder, keep_last)
    return out


def restore_roles(point: ResumePoint, learners, source, sync, companions: dict[str, Any] | None = None) -> None:
    """Load a step checkpoint into freshly started roles: each learner rank's state (and each companion
    group's, from resume/<kind>/) and the source's data position; with generators (`sync` not None), the
    checkpoint's policy version is sent to them again, verified like any sync. The loop's own counters
    are the controller's to take."""
    learners.call("load_state", str(point.learner_state))
    for kind, group in (companions or {}).items():
        if not (point.learner_state / kind).is_dir():
            raise ResumeError(f"{point.checkpoint} holds no {kind} state ({RESUME_DIR}/{kind}/): it was not "
                              f"written by a run with a {kind}")
        group.call("load_state", str(point.learner_state / kind))
    source.load_state(point.state["source"])
    if sync is not None:
        sync.version = point.state["policy_version"]
        found = sync.resync()
        log.info("generators run the resumed policy (version %d): %s", sync.version, found)
