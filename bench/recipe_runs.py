"""What the seed benchmarks share: train a recipe in a child process under a bench folder
(reusing a finished run, never overwriting one) and read its evaluations back."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def finished(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "final").exists()


def train(recipe: str, name: str, seed: int, out: Path, overrides: list[str], label: str) -> float:
    """`rlft train recipe` as run `name` under `out` at `seed`; seconds taken (0 when reused).
    Exits naming the log when the run fails."""
    if finished(out / name):
        return 0.0
    argv = [sys.executable, "-m", "rlft.cli", "train", "--quiet", recipe, f"run.name={name}", f"run.seed={seed}",
            f"run.output_dir={out}", "run.if_exists=error", "tracking.wandb=disabled", *overrides]
    started = time.time()
    log = out / f"{name}.log"
    with log.open("w") as stream:
        code = subprocess.call(argv, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{label} failed (exit {code}); see {log}")
    return time.time() - started


def evaluations(run_dir: Path, key: str) -> list[dict]:
    """The rows of a run's metrics.jsonl that hold evaluation metric `key`, in step order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if key in row]


def mean_std(values: list[float], scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    """'mean (std)' over seeds."""
    spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values) * scale)} ({fmt.format(spread)})"


def plot_seed_curves(panels: list[tuple[str, str, dict[str, dict[int, list[tuple[int, float]]]]]], path: Path) -> None:
    """One panel per (y label, title, {series: {seed: [(step, value)]}}): every seed's curve thin, the
    mean over seeds thick, one colour per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (ylabel, title, series) in zip(axes[0], panels):
        for (label, seeds), color in zip(series.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
            for points in seeds.values():
                ax.plot(*zip(*points), color=color, alpha=0.3, linewidth=1)
            steps = sorted({s for points in seeds.values() for s, _ in points})
            means = [statistics.mean(v for points in seeds.values() for s2, v in points if s2 == s) for s in steps]
            ax.plot(steps, means, color=color, linewidth=2.5, label=f"{label} (mean of {len(seeds)} seeds)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
