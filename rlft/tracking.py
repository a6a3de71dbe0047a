"""Run outputs: metrics as JSON lines, wandb (offline unless configured), plots, summary.

Metric names are namespaced (`train/`, `eval/`, `perf/`, ...). wandb runs online only when the
user has logged in (WANDB_API_KEY or a netrc entry) or asks for it; otherwise offline, leaving a
run folder that `wandb sync` uploads later.
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    return "online" if wandb_logged_in() else "offline"


class Tracker:
    """Writes every logged metric to <run_dir>/metrics.jsonl and to wandb."""

    def __init__(self, run_dir: Path, name: str, config: dict, wandb_mode: str, project: str,
                 resume_step: int | None = None, wandb_id: str | None = None):
        """resume_step: a resumed run continues the metrics (and the wandb run `wandb_id`) after that step."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            set_aside_rows_after(self.metrics_path, resume_step)
        self._file = self.metrics_path.open("a")
        self.latest: dict[str, float] = {}
        self.wandb_mode = resolve_wandb_mode(wandb_mode)
        self._wandb = None
        if self.wandb_mode != "disabled":
            self._wandb = self._start_wandb(name, config, project, wandb_id)

    def _start_wandb(self, name: str, config: dict, project: str, run_id: str | None):
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed; metrics go to %s only", self.metrics_path)
            return None
        os.environ.setdefault("WANDB_SILENT", "true")
        return wandb.init(
            project=project, name=name, config=config, dir=str(self.run_dir), mode=self.wandb_mode,
            reinit="finish_previous", id=run_id, resume="allow" if run_id else None,
        )

    @property
    def wandb_id(self) -> str | None:
        return self._wandb.id if self._wandb is not None else None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.latest.update(clean)
        self._file.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """A wandb Table under `key` at `step`; nothing when wandb is off (the caller keeps its own file)."""
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        if self._wandb is not None:
            if summary:
                self._wandb.summary.update(summary)
            self._wandb.finish()
            self._wandb = None
        self._file.close()

    @property
    def wandb_dir(self) -> Path | None:
        found = sorted((self.run_dir / "wandb").glob("*run-*"))
        return found[-1] if found else None


def set_aside_rows_after(path: Path, step: int) -> None:
    """Keep the rows up to `step` in `path`; later ones (logged after the checkpoint a run resumes
    from; the resumed run logs those steps again) move to metrics.after_step_<step>.jsonl."""
    if not path.is_file():
        return
    kept, later = [], []
    for line in path.read_text().splitlines():
        if line.strip():
            (later if json.loads(line)["step"] > step else kept).append(line)
    if later:
        aside = path.with_name(f"metrics.after_step_{step}.jsonl")
        with aside.open("a") as f:
            f.write("\n".join(later) + "\n")
        log.info("%d metric rows logged after step %d moved to %s", len(later), step, aside)
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} a run folder?)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    return rows


def plot_run(run_dir: Path) -> list[Path]:
    """One PNG per metric namespace under <run_dir>/plots/, each curve against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in read_metrics(run_dir):
        for key, value in row.items():
            if "/" in key and isinstance(value, (int, float)) and math.isfinite(value):
                series[key.split("/", 1)[0]][key].append((row["step"], value))
    out_dir = Path(run_dir) / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for namespace, curves in sorted(series.items()):
        fig, axes = plt.subplots(len(curves), 1, figsize=(7, 2.4 * len(curves)), squeeze=False)
        for ax, (key, points) in zip(axes[:, 0], sorted(curves.items())):
            steps, values = zip(*points)
            ax.plot(steps, values, marker="." if len(points) < 30 else None)
            ax.set_title(key, fontsize=9)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        path = out_dir / f"{namespace}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
