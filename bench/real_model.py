"""A real model gets better: configs/gppo_smollm2_sums.yaml (GPPO + LoRA on SmolLM2-135M-Instruct)
over seeds, held-out greedy accuracy against minutes of RL.

    .venv/bin/python bench/real_model.py                          # seeds 0 1 2 (~40 min each on 2 cores)
    .venv/bin/python bench/real_model.py --seeds 0 --override train.steps=10
    .venv/bin/python bench/real_model.py --report-only            # table, PNG and JSON from runs already made

Each seed is `rlft train` of the recipe with `run.seed` set, in its own child process, under --out
(default runs/bench_real_model; a finished run is reused, never overwritten). The seed changes the
LoRA initialisation, the data order and the sampling; the held-out set (200 questions) is the same.

Reported per seed: greedy held-out accuracy before RL (step 0) and at every evaluation, and the
minutes of RL to each evaluation: the sum of the iterations' `perf/step_seconds` (generate, score,
train, sync), evaluations and role start-up excluded (their minutes are reported beside). The gain
is the last evaluation minus the first; mean and standard deviation over seeds. Raw numbers go to
--json (default bench/results/real_model.json), the curves to --png.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from recipe_runs import ROOT, curve, mean_std, plot_minutes_curves, train, write_results

RECIPE = "configs/gppo_smollm2_sums.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--override", nargs="*", default=[], help="dotted overrides for every run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_real_model")
    parser.add_argument("--tag", default="", help="suffix of the run names (another variant of the recipe)")
    parser.add_argument("--png", type=Path, default=ROOT / "bench" / "results" / "real_model.png")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "real_model.json")
    parser.add_argument("--report-only", action="store_true", help="only read finished runs")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    runs = {}
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        name = f"sums_seed{seed}{args.tag}"
        if not args.report_only:
            took = train(args.recipe, name, seed, args.out, args.override, f"{args.recipe} seed {seed}")
            print(f"seed {seed}: {took / 60:.1f} min", flush=True)
        if (args.out / name / "metrics.jsonl").is_file():
            runs[seed] = curve(args.out / name)
    if not runs:
        raise SystemExit(f"no runs under {args.out}")
    print(f"\n{args.recipe}{' ' + ' '.join(args.override) if args.override else ''}")
    print("| seed | start | end | gain | RL min | eval min | evaluations (RL min: accuracy) |")
    print("|---|---|---|---|---|---|---|")
    for seed, run in runs.items():
        evals = run["evaluations"]
        trace = ", ".join(f"{p['rl_minutes']:.0f}: {p['accuracy']:.3f}" for p in evals)
        print(f"| {seed} | {evals[0]['accuracy']:.3f} | {evals[-1]['accuracy']:.3f} | "
              f"{evals[-1]['accuracy'] - evals[0]['accuracy']:+.3f} | {run['rl_minutes']:.1f} | "
              f"{run['eval_minutes']:.1f} | {trace} |")
    starts = [r["evaluations"][0]["accuracy"] for r in runs.values()]
    ends = [r["evaluations"][-1]["accuracy"] for r in runs.values()]
    gains = [e - s for s, e in zip(starts, ends)]
    print(f"| mean (sd) | {mean_std(starts)} | {mean_std(ends)} | {mean_std(gains)} | "
          f"{statistics.mean(r['rl_minutes'] for r in runs.values()):.1f} | | |")
    plot_minutes_curves({"GPPO + LoRA": runs}, args.png,
                        f"SmolLM2-135M-Instruct, GPPO + LoRA: {Path(args.recipe).name} {' '.join(args.override)}".strip())
    write_results(args.json, {"recipe": args.recipe, "overrides": args.override, "runs": runs,
                              "start": starts, "end": ends, "gain": gains})
    print(f"\nwrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
