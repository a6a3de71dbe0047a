"""DRAKES on DNA over seeds: the pretrained model vs DRAKES vs DRAKES without KL (the paper's DNA
table; docs/algorithms.md#dna-evaluation-metrics).

    .venv/bin/python bench/drakes_dna.py                         # 3 seeds, the recipe's budget
    .venv/bin/python bench/drakes_dna.py --seeds 0 1 2 --steps 200
    .venv/bin/python bench/drakes_dna.py --report-only           # table, PNG and JSON from runs already made

Every run is configs/drakes_dna.yaml (`rlft train`, in a child process) with `run.seed` set, under
--out (default runs/bench_drakes; a finished run is reused, never overwritten). Its warm start,
configs/mdlm_dna_pretrain.yaml, runs once under --out and is shared by every run. "without KL" is
the same recipe with algorithm.alpha=0. The pretrained row is each DRAKES run's evaluation at
step 0 (the same weights, that seed's evaluation noise).

Metrics (rlft.sources.sampling; 128 sequences per evaluation by the recipe): Pred-Activity = median
HepG2 logit of the held-out evaluation oracle; HepG2 % = fraction it classifies as HepG2; 3-mer
and JASPAR motif correlations with the data's top HepG2 sequences; App-Log-Lik = median
approximate log-likelihood (nats) under the pretrained model. Mean (std) over seeds. The raw
numbers (every evaluation of every run, minutes per run, the machine) go to --json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from recipe_runs import ROOT, evaluations, finished, mean_std, plot_seed_curves, run_summary, train, write_results

RECIPE = "configs/drakes_dna.yaml"
METHODS = {"drakes": [], "drakes_no_kl": ["algorithm.alpha=0"]}
COLUMNS = (("Pred-Activity", "eval/pred_activity", 1.0, "{:.2f}"), ("HepG2 %", "eval/accuracy", 100.0, "{:.1f}"),
           ("3-mer Corr", "eval/kmer3_corr", 1.0, "{:.3f}"), ("JASPAR Corr", "eval/motif_corr", 1.0, "{:.3f}"),
           ("App-Log-Lik", "eval/log_likelihood", 1.0, "{:.1f}"))
# Table row -> (the method's runs, which evaluation): "Pretrained" is the DRAKES runs' step 0.
ROWS = {"Pretrained": ("drakes", 0), "DRAKES w/o KL": ("drakes_no_kl", -1), "DRAKES": ("drakes", -1)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="train.steps of the DRAKES runs (default: the recipe's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_drakes")
    parser.add_argument("--png", type=Path, default=None, help="plot path (default: <out>/drakes_dna.png)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "drakes_dna.json")
    parser.add_argument("--report-only", action="store_true", help="only read finished runs")
    return parser.parse_args()


def run_name(method: str, seed: int, steps: int | None) -> str:
    return f"{method}_s{seed}" + (f"_{steps}steps" if steps else "")


def run_one(method: str, seed: int, args) -> float:
    overrides = [*METHODS[method], *([f"train.steps={args.steps}"] if args.steps else [])]
    return train(RECIPE, run_name(method, seed, args.steps), seed, args.out, overrides, f"{method} seed {seed}")


def print_table(args, rows: dict[str, list[dict]], seconds: dict) -> None:
    print(f"\nDNA design, {RECIPE}, seeds {args.seeds}: mean (std) over seeds\n")
    print("| Method | " + " | ".join(c[0] for c in COLUMNS) + " | seeds | min/run |")
    print("|---|" + "---|" * (len(COLUMNS) + 2))
    for label, found in rows.items():
        if not found:
            print(f"| {label} | " + " | ".join("-" for _ in COLUMNS) + " | 0 | - |")
            continue
        method = ROWS[label][0]
        minutes = [seconds.get((method, s), 0.0) / 60 for s in args.seeds]
        timing = f"{statistics.median(minutes):.1f}" if label != "Pretrained" and any(minutes) else "-"
        print(f"| {label} | " + " | ".join(mean_std([r[key] for r in found], scale, fmt) for _, key, scale, fmt in COLUMNS)
              + f" | {len(found)} | {timing} |")


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seconds: dict[tuple[str, int], float] = {}
    if not args.report_only:
        for seed in args.seeds:
            for method in METHODS:
                print(f"running {method} seed {seed} ...", flush=True)
                seconds[method, seed] = run_one(method, seed, args)
    runs = {m: {s: evaluations(args.out / run_name(m, s, args.steps), "eval/pred_activity") for s in args.seeds
                if finished(args.out / run_name(m, s, args.steps))} for m in METHODS}
    rows = {label: [evals[at] for evals in runs[method].values()] for label, (method, at) in ROWS.items()}
    print_table(args, rows, seconds)
    png = args.png or args.out / "drakes_dna.png"
    plot_seed_curves([(label, "", {m: {seed: [(r["step"], r[key]) for r in rows] for seed, rows in runs[m].items()}
                                   for m in METHODS})
                      for key, label in (("eval/pred_activity", "Pred-Activity (evaluation oracle, median)"),
                                         ("eval/log_likelihood", "App-Log-Lik under the pretrained model (median)"))],
                     png)
    write_results(args.json, {
        "recipe": RECIPE, "seeds": args.seeds, "steps": args.steps, "methods": METHODS,
        "table": {label: {"seeds": list(runs[ROWS[label][0]]), **{c[1]: [r[c[1]] for r in found] for c in COLUMNS}}
                  for label, found in rows.items()},
        "wall_minutes": {f"{m}_s{s}": t / 60 for (m, s), t in seconds.items()},  # this invocation; 0: reused
        "loop_minutes": {f"{m}_s{s}": run_summary(args.out / run_name(m, s, args.steps)).get("seconds", 0.0) / 60
                         for m in METHODS for s in runs[m]},
        "evaluations": {m: {seed: [{k: v for k, v in r.items() if k == "step" or k.startswith("eval/")} for r in evals]
                            for seed, evals in found.items()} for m, found in runs.items()}})
    print(f"\ncurves: {png}\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
