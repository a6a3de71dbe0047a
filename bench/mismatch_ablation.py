"""The rollout/training mismatch in 16 bits: configs/gppo_smollm2_sums.yaml in bf16 with three ways of
taking pi_old, over seeds; held-out greedy accuracy against minutes of RL.

    .venv/bin/python bench/mismatch_ablation.py                     # 3 variants x seeds 0 1 2 (~13 min a run)
    .venv/bin/python bench/mismatch_ablation.py --seeds 0 --steps 8
    .venv/bin/python bench/mismatch_ablation.py --report-only       # table, PNG and JSON from runs already made

Variants (every run: model.dtype=fast, i.e. bf16 on a CPU with avx512_bf16, in vLLM and DeepSpeed):
  sampler      pi_old = the generator's sampling log-probs (what the float32 recipe uses)
  learner+tis  the learner rescores each batch (pi_prox); w = pi_prox / pi_sampler per token, truncated at C=2
  learner+mis  the same, tokens with w outside [1/2, 2] masked out of the loss
The parity probe's tolerance is raised to 0.3 (mean |delta log-prob|) for all three: bf16 vLLM and
the bf16 learner drift apart by more than the 16-bit default (0.1) as the adapter grows, which is the
mismatch being measured, not a lost weight update.

Runs are seed-major (every variant of seed 0, then seed 1, ...) so a cut-short bench still compares
the variants on the same seeds. Each run is `rlft train` in a child process under --out (a finished
run is reused, never overwritten). Minutes of RL are the sum of `perf/step_seconds` (evaluations and
start-up excluded). Reported per variant: mean (sd) of the accuracy at each evaluation, the sampler /
learner mismatch the learners measured (learner variants), and the parity probe after the last update.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from real_model import RECIPE
from recipe_runs import ROOT, curve, mean_std, plot_minutes_curves, train, write_results

BF16 = ["model.dtype=fast", "sync.parity_tolerance=0.3"]
VARIANTS = {
    "sampler": ["algorithm.old_logprobs=sampler"],
    "learner+tis": ["algorithm.old_logprobs=learner", "algorithm.correction=tis"],
    "learner+mis": ["algorithm.old_logprobs=learner", "algorithm.correction=mis"],
}
LOGGED = ["mismatch/k3", "mismatch/abs_logprob_diff_mean", "mismatch/abs_logprob_diff_max",
          "mismatch/weight_mean", "mismatch/corrected_token_frac", "sync/parity_mean_abs_diff", "perf/step_seconds"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per run (the recipe has 40)")
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_mismatch")
    parser.add_argument("--png", type=Path, default=ROOT / "bench" / "results" / "mismatch_ablation.png")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "mismatch_ablation.json")
    parser.add_argument("--report-only", action="store_true", help="only read finished runs")
    return parser.parse_args()


def step_means(run_dir: Path) -> dict:
    """Mean over the run's iterations of each metric in LOGGED that it logged, and the resolved dtype."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    means = {}
    for key in LOGGED:
        values = [row[key] for row in rows if key in row and row.get("step", 0) > 0]
        if values:
            means[key] = max(values) if key.endswith("_max") else statistics.mean(values)
    return means


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = [*BF16, f"train.steps={args.steps}", f"train.eval_every={args.eval_every}"]
    names = {(v, s): f"{v.replace('+', '_')}_seed{s}" for v in args.variants for s in args.seeds}
    if not args.report_only:
        for seed in args.seeds:
            for variant in args.variants:
                took = train(RECIPE, names[variant, seed], seed, args.out, [*common, *VARIANTS[variant]],
                             f"{variant} seed {seed}")
                print(f"{variant} seed {seed}: {took / 60:.1f} min", flush=True)
    results: dict[str, dict] = {}
    for (variant, seed), name in names.items():
        run_dir = args.out / name
        if (run_dir / "finished.json").is_file():
            results.setdefault(variant, {})[seed] = {**curve(run_dir), "means": step_means(run_dir)}
    if not results:
        raise SystemExit(f"no finished runs under {args.out}")

    print(f"\n{RECIPE} {' '.join(common)}")
    steps = [p["step"] for p in next(iter(next(iter(results.values())).values()))["evaluations"]]
    print("| variant | seeds | " + " | ".join(f"step {step}" for step in steps)
          + " | gain | RL min | s/step | mean abs dlogp | max abs dlogp | k3 | mean w | corrected | parity |")
    print("|---" * (len(steps) + 12) + "|")
    table = {}
    for variant, runs in results.items():
        count = min(len(r["evaluations"]) for r in runs.values())
        accuracy = [[r["evaluations"][i]["accuracy"] for r in runs.values()] for i in range(count)]
        gains = [r["evaluations"][count - 1]["accuracy"] - r["evaluations"][0]["accuracy"] for r in runs.values()]

        def mean_of(key: str, runs=runs) -> str:
            values = [r["means"][key] for r in runs.values() if key in r["means"]]
            return f"{statistics.mean(values):.3g}" if values else "-"

        table[variant] = {"seeds": sorted(runs), "accuracy": accuracy, "gain": gains}
        print(f"| {variant} | {len(runs)} | " + " | ".join(mean_std(a) for a in accuracy) + f" | {mean_std(gains)} | "
              f"{statistics.mean(r['rl_minutes'] for r in runs.values()):.1f} | {mean_of('perf/step_seconds')} | "
              f"{mean_of('mismatch/abs_logprob_diff_mean')} | {mean_of('mismatch/abs_logprob_diff_max')} | "
              f"{mean_of('mismatch/k3')} | {mean_of('mismatch/weight_mean')} | "
              f"{mean_of('mismatch/corrected_token_frac')} | {mean_of('sync/parity_mean_abs_diff')} |")
    plot_minutes_curves(results, args.png, f"SmolLM2-135M-Instruct in bf16, GPPO + LoRA: pi_old ({args.steps} steps)")
    write_results(args.json, {"recipe": RECIPE, "overrides": common, "variants": VARIANTS, "table": table,
                              "runs": results})
    print(f"\nwrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
