"""Learning results over seeds on one budget: SFT vs IFT, online DPO vs tree preference optimization,
and GPPO with outcome rewards vs outcome + process (progress-tracker) rewards.

    .venv/bin/python bench/learning_seeds.py                         # 3 seeds, every comparison, the recipes' budgets
    .venv/bin/python bench/learning_seeds.py --pairs dpo-tpo --seeds 0 1 2 --steps 400
    .venv/bin/python bench/learning_seeds.py --pairs outcome-process --png bench/results/outcome_process_seeds.png
    .venv/bin/python bench/learning_seeds.py --report-only           # table, PNG and JSON from runs already made

Each run is a shipped recipe (`rlft train`) with `run.seed` set, in its own child process, under
--out (default runs/bench_seeds; a run already finished there is reused, never overwritten).
Within a comparison both recipes share everything but what is compared:

* sft vs ift: configs/sft_tiny_arith.yaml and configs/ift_tiny_arith.yaml, full fine-tuning of the
  untrained tiny model on the same worked traces, same steps, batch, lr and schedule.
* dpo vs tpo: configs/dpo_tiny_arith.yaml and configs/tpo_tiny_arith.yaml from the same SFT warm
  start (made once under --out with its recipe seed), LoRA r=8, 32 prompts x 8 sampled
  responses per iteration (DPO: 8 independent samples, correct x wrong pairs by the answer
  checker; TPO: a tree of 8 leaves ranked by the answer and per-line checkers), 4 optimizer
  steps of 64 rows per iteration, same lr and schedule.
* outcome vs process: configs/gppo_tiny_arith.yaml (the main job) and
  configs/gppo_process_tiny_arith.yaml, the same warm start, sizes and budget; the second adds
  step segments, progress-tracker step rewards and GPPO's process advantage to the outcome one.

The seed changes the data order, the sampling and (for SFT/IFT) the initial weights' training
order; the warm start is shared. Reported: held-out greedy accuracy (200 problems) at the end,
mean, standard deviation and range over the seeds, and at each evaluation (the PNG). The raw
numbers (every evaluation of every run, minutes per run, the machine) go to --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from recipe_runs import ROOT, plot_seed_curves, run_summary, train, write_results

RECIPES = {"sft": "configs/sft_tiny_arith.yaml", "ift": "configs/ift_tiny_arith.yaml",
           "dpo": "configs/dpo_tiny_arith.yaml", "tpo": "configs/tpo_tiny_arith.yaml",
           "gppo": "configs/gppo_tiny_arith.yaml", "gppo_process": "configs/gppo_process_tiny_arith.yaml"}
PAIRS = {"sft-ift": ("sft", "ift"), "dpo-tpo": ("dpo", "tpo"), "outcome-process": ("gppo", "gppo_process")}
EVAL_EVERY = {"sft": 50, "ift": 50, "dpo": 80, "tpo": 80, "gppo": 80, "gppo_process": 80}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="train.steps for every run (default: the recipes')")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_seeds")
    parser.add_argument("--png", type=Path, default=None, help="plot path (default: <out>/learning_seeds.png)")
    parser.add_argument("--json", type=Path, default=None,
                        help="raw results (default: bench/results/learning_seeds_<pairs>.json)")
    parser.add_argument("--report-only", action="store_true", help="only read finished runs")
    args = parser.parse_args()
    args.json = args.json or ROOT / "bench" / "results" / f"learning_seeds_{'_'.join(args.pairs)}.json"
    return args


def run_name(algorithm: str, seed: int, steps: int | None) -> str:
    return f"{algorithm}_s{seed}" + (f"_{steps}steps" if steps else "")


def run_one(algorithm: str, seed: int, args) -> float:
    """Train one recipe at one seed (reused when its run folder holds a final checkpoint); seconds taken."""
    overrides = [f"train.eval_every={EVAL_EVERY[algorithm]}", *([f"train.steps={args.steps}"] if args.steps else [])]
    return train(RECIPES[algorithm], run_name(algorithm, seed, args.steps), seed, args.out, overrides,
                 f"{algorithm} seed {seed}")


def curve(run_dir: Path) -> list[tuple[int, float]]:
    """(optimizer step, eval accuracy) from a run's metrics.jsonl."""
    points = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        key = next((k for k in row if k.startswith("eval/accuracy")), None)
        if key is not None:
            points.append((int(row["step"]), float(row[key])))
    return points


def summarise(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f} [{min(values):.3f}, {max(values):.3f}]"


def table_rows(args, curves: dict, seconds: dict) -> dict[str, dict]:
    """Per algorithm of the compared pairs: start, finals per seed, minutes per run (None: no finished run)."""
    rows = {}
    for algorithm in [a for pair in args.pairs for a in PAIRS[pair]]:
        runs = curves[algorithm]
        if not runs:
            rows[algorithm] = None
            continue
        starts = [points[0][1] for points in runs.values() if points[0][0] == 0]
        minutes = [seconds.get((algorithm, s), 0.0) / 60 for s in runs]
        loop_minutes = [run_summary(args.out / run_name(algorithm, s, args.steps)).get("seconds", 0.0) / 60
                        for s in runs]
        rows[algorithm] = {"start": statistics.mean(starts) if starts else None,
                           "final": {s: points[-1][1] for s, points in runs.items()},
                           "minutes": statistics.median(minutes) if any(minutes) else None,
                           "loop_minutes": dict(zip(runs, loop_minutes))}
    return rows


def print_table(args, rows: dict[str, dict]) -> None:
    print(f"\nheld-out accuracy after the last step, over seeds {args.seeds} (mean ± std [min, max]):\n")
    print("| comparison | algorithm | start | final | per seed | min/run |")
    print("|---|---|---|---|---|---|")
    for pair in args.pairs:
        for algorithm in PAIRS[pair]:
            row = rows[algorithm]
            if row is None:
                print(f"| {pair} | {algorithm} | - | no finished run | - | - |")
                continue
            finals = list(row["final"].values())
            timing = f"{row['minutes']:.1f}" if row["minutes"] else "-"
            start = f"{row['start']:.3f}" if row["start"] is not None else "-"
            print(f"| {pair} | {algorithm} | {start} | {summarise(finals)} | "
                  f"{', '.join(f'{v:.3f}' for v in finals)} | {timing} |")


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    algorithms = [a for pair in args.pairs for a in PAIRS[pair]]
    seconds: dict[tuple[str, int], float] = {}
    if not args.report_only:
        for seed in args.seeds:  # seed-major: a partial run still compares both algorithms
            for algorithm in algorithms:
                print(f"running {algorithm} seed {seed} ...", flush=True)
                seconds[algorithm, seed] = run_one(algorithm, seed, args)
    finished = lambda a, s: (args.out / run_name(a, s, args.steps) / "checkpoints" / "final").exists()  # noqa: E731
    curves = {a: {s: curve(args.out / run_name(a, s, args.steps)) for s in args.seeds if finished(a, s)}
              for a in algorithms}  # a run still going (or stopped) is left out
    rows = table_rows(args, curves, seconds)
    print_table(args, rows)
    png = args.png or args.out / "learning_seeds.png"
    plot_seed_curves([("held-out accuracy (greedy)", pair.replace("-", " vs "), {a: curves[a] for a in PAIRS[pair]})
                      for pair in args.pairs], png)
    write_results(args.json, {
        "pairs": args.pairs, "seeds": args.seeds, "steps": args.steps, "recipes": {a: RECIPES[a] for a in algorithms},
        "eval_every": {a: EVAL_EVERY[a] for a in algorithms}, "table": rows,
        "wall_minutes": {f"{a}_s{s}": t / 60 for (a, s), t in seconds.items()},  # this invocation; 0: reused
        "curves": {a: {s: points for s, points in runs.items()} for a, runs in curves.items()}})
    print(f"\ncurves: {png}\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
