"""On-policy distillation on the main job's recipe and budget, over seeds: the share of the teacher-student
gap it closes, beside GPPO trained on the checker's reward for the same budget.

    .venv/bin/python bench/distill.py                       # seeds 0 1 2 (~5 min a run on 2 idle cores)
    .venv/bin/python bench/distill.py --seeds 0 --report-only

Every run is configs/distill_tiny_arith.yaml as shipped with `run.seed` set: the student is the main job's
warm start (SFT on 352 worked examples), the teacher the SFT recipe on the whole train split (300 steps),
both made once under --out and shared by the seeds; 200 iterations of 32 prompts x 8 samples in 4 optimizer
steps, LoRA r=8, evaluation of 200 held-out problems every 80 steps. Gap closed = (final - start) /
(teacher - start), with the teacher's accuracy from its own final evaluation on the same 200 problems.
GPPO's row reads finished runs of the policy-gradient bench (bench/pg_algorithms.py, --gppo-runs), whose
gppo runs are configs/gppo_tiny_arith.yaml at the same seeds; it is left out for seeds it has not run.
Reported: accuracy at the start and the end, gap closed (mean, sd over seeds), the reverse KL to the
teacher on the student's own samples over the first and the last 10 iterations, minutes of RL; the raw
results in --json (default bench/results/distill.json) and the curves in a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from recipe_runs import ROOT, curve, finished, plot_seed_curves, run_summary, train, write_results

RECIPE = "configs/distill_tiny_arith.yaml"
TEACHER_RUN = "distill_tiny_arith_teacher"  # the recipe's teacher.overrides name it


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_distill")
    parser.add_argument("--gppo-runs", type=Path, default=ROOT / "runs" / "bench_pg_algorithms",
                        help="folder of bench/pg_algorithms.py's runs (gppo_s<seed>)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "distill.json")
    parser.add_argument("--report-only", action="store_true", help="only read finished runs")
    return parser.parse_args(argv)


def reverse_kl(run_dir: Path, iterations: int = 10) -> tuple[float, float]:
    """Mean rollout/reverse_kl over the first and over the last `iterations` iterations."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = [r["rollout/reverse_kl"] for r in rows if "rollout/reverse_kl" in r]
    return statistics.mean(values[:iterations]), statistics.mean(values[-iterations:])


def gap_closed(start: float, final: float, teacher: float) -> float:
    return (final - start) / (teacher - start)


def summarise(runs: dict[int, dict], teacher: float) -> dict:
    finals = {s: r["evaluations"][-1]["accuracy"] for s, r in runs.items()}
    starts = {s: r["evaluations"][0]["accuracy"] for s, r in runs.items()}
    gaps = {s: gap_closed(starts[s], finals[s], teacher) for s in runs}
    return {"seeds": sorted(runs), "start": starts, "final": finals, "gap_closed": gaps,
            "final_mean": statistics.mean(finals.values()),
            "final_sd": statistics.stdev(finals.values()) if len(finals) > 1 else None,
            "gap_closed_mean": statistics.mean(gaps.values()),
            "gap_closed_sd": statistics.stdev(gaps.values()) if len(gaps) > 1 else None,
            "rl_minutes": statistics.median(r["rl_minutes"] for r in runs.values())}


def fmt(mean: float, sd: float | None) -> str:
    return f"{mean:.3f}" + (f" ({sd:.3f})" if sd is not None else " (1 seed)")


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:
            print(f"running distill seed {seed} ...", flush=True)
            train(RECIPE, f"distill_s{seed}", seed, args.out, [], f"distill seed {seed}")
    teacher_dir = args.out / TEACHER_RUN
    if not finished(teacher_dir):
        raise SystemExit(f"no finished teacher run in {teacher_dir}: run the bench without --report-only first")
    teacher = run_summary(teacher_dir)["eval/accuracy"]
    distill = {s: curve(args.out / f"distill_s{s}") for s in args.seeds if finished(args.out / f"distill_s{s}")}
    gppo = {s: curve(args.gppo_runs / f"gppo_s{s}") for s in args.seeds if finished(args.gppo_runs / f"gppo_s{s}")}
    kl = {s: reverse_kl(args.out / f"distill_s{s}") for s in distill}
    rows = {"distill": summarise(distill, teacher) if distill else None,
            "gppo": summarise(gppo, teacher) if gppo else None}
    print(f"\nteacher (SFT, 300 steps on the whole train split): held-out accuracy {teacher:.3f}")
    print("\n| method | seeds | start | final (mean (sd)) | per seed | gap closed (mean (sd)) | minutes of RL (median) |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        if row is None:
            print(f"| {name} | - | - | no finished run | - | - | - |")
            continue
        print(f"| {name} | {', '.join(map(str, row['seeds']))} | {statistics.mean(row['start'].values()):.3f} | "
              f"{fmt(row['final_mean'], row['final_sd'])} | {', '.join(f'{v:.3f}' for v in row['final'].values())} | "
              f"{fmt(row['gap_closed_mean'], row['gap_closed_sd'])} | {row['rl_minutes']:.1f} |")
    for seed, (first, last) in kl.items():
        print(f"distill seed {seed}: reverse KL to the teacher on its own samples {first:.3f} -> {last:.3f} nats/token "
              "(first -> last 10 iterations)")
    png = args.json.with_suffix(".png")
    series = {"distill (teacher's reverse KL)": distill, "gppo (checker's reward)": gppo}
    plot_seed_curves([("held-out accuracy (greedy, 200 problems)",
                       f"on-policy distillation vs GPPO; teacher {teacher:.3f}",
                       {name: {s: [(p["step"], p["accuracy"]) for p in r["evaluations"]] for s, r in runs.items()}
                        for name, runs in series.items() if runs})], png)
    write_results(args.json, {"recipe": RECIPE, "seeds": args.seeds, "teacher_accuracy": teacher, "table": rows,
                              "reverse_kl_first_last": {str(s): v for s, v in kl.items()},
                              "runs": {"distill": {str(s): r for s, r in distill.items()},
                                       "gppo": {str(s): r for s, r in gppo.items()}}})
    print(f"\ncurves: {png}\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
