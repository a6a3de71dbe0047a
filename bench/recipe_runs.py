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


def machine() -> dict:
    """What produced a result: CPU model, the vector flags that change kernels and numerics (AVX2,
    AVX-512, bf16, AMX), cores, load, library versions and the commit."""
    import os
    import platform

    import torch

    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", "x86_64"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"cpu": cpu, "cores": os.cpu_count(),
            "flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}),
            "load_average": os.getloadavg(), "torch": torch.__version__, "commit": commit.stdout.strip(),
            "date": time.strftime("%Y-%m-%d")}


def write_results(path: Path, results: dict) -> Path:
    """The raw results of a bench as JSON (with the machine that produced them), beside its PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **results}, indent=1) + "\n")
    return path


def finished(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "final").exists()


def run_summary(run_dir: Path) -> dict:
    """A finished run's finished.json (final metrics, steps, `seconds` of its loop without role start-up);
    {} if none."""
    path = run_dir / "finished.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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


def curve(run_dir: Path) -> dict:
    """Every evaluation of a run with the minutes of RL before it (the sum of the iterations'
    `perf/step_seconds`), the minutes spent evaluating, each iteration's seconds and the mean length
    of the sampled responses."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rl_seconds, points, eval_seconds, step_seconds, lengths = 0.0, [], 0.0, [], []
    for row in rows:
        if "perf/step_seconds" in row:
            rl_seconds += row["perf/step_seconds"]
            step_seconds.append(round(row["perf/step_seconds"], 2))
        if "rollout/response_length" in row:
            lengths.append(row["rollout/response_length"])
        if "eval/accuracy" in row:
            points.append({"step": row["step"], "rl_minutes": rl_seconds / 60, "accuracy": row["eval/accuracy"],
                           "tokens": row.get("eval/tokens")})
        if "perf/time_eval" in row:
            eval_seconds += row["perf/time_eval"]
    return {"evaluations": points, "rl_minutes": rl_seconds / 60, "eval_minutes": eval_seconds / 60,
            "loop_minutes": run_summary(run_dir).get("seconds", 0.0) / 60, "step_seconds": step_seconds,
            "train_length": statistics.mean(lengths) if lengths else None}


def evaluations(run_dir: Path, key: str) -> list[dict]:
    """The rows of a run's metrics.jsonl that hold evaluation metric `key`, in step order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if key in row]


def mean_std(values: list[float], scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    """'mean (std)' over seeds."""
    spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values) * scale)} ({fmt.format(spread)})"


SERIES_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:grey")


def plot_seed_curves(panels: list[tuple[str, str, dict[str, dict[int, list[tuple[int, float]]]]]], path: Path) -> None:
    """One panel per (y label, title, {series: {seed: [(step, value)]}}): every seed's curve thin, the
    mean over seeds thick, one colour per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (ylabel, title, series) in zip(axes[0], panels):
        for (label, seeds), color in zip(series.items(), SERIES_COLOURS):
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


def plot_minutes_curves(groups: dict[str, dict], path: Path, title: str, target: float | None = None) -> None:
    """Held-out accuracy against minutes of RL: per group ({label: {seed: run}}, a run holding
    `evaluations` of {rl_minutes, accuracy}) every seed thin and the mean over seeds at each
    evaluation thick, one colour per group; `target` as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (label, runs), colour in zip(groups.items(), ("tab:red", "tab:blue", "tab:green", "tab:orange")):
        for run in runs.values():
            points = run["evaluations"]
            ax.plot([p["rl_minutes"] for p in points], [p["accuracy"] for p in points], color=colour, alpha=0.25,
                    linewidth=1)
        count = min(len(run["evaluations"]) for run in runs.values())
        at = [[run["evaluations"][i] for run in runs.values()] for i in range(count)]
        ax.plot([statistics.mean(p["rl_minutes"] for p in points) for points in at],
                [statistics.mean(p["accuracy"] for p in points) for points in at], color=colour, linewidth=2.5,
                marker="o", label=f"{label} (mean of {len(runs)} seeds)")
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.2f}")
    ax.set_xlabel("minutes of RL on 2 CPU cores (evaluations excluded)")
    ax.set_ylabel("held-out greedy accuracy (200 questions)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
