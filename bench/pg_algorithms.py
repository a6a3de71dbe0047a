"""The policy-gradient family over seeds on the main job's recipe and budget: GPPO (the main job) vs the
advantage estimators (RLOO, REINFORCE++, REINFORCE++-baseline) and policy losses (GSPO, CISPO) users
ask for, and PPO with a critic.

    .venv/bin/python bench/pg_algorithms.py                        # every variant, seeds 0 1 2 (~4 min a run)
    .venv/bin/python bench/pg_algorithms.py --variants gppo rloo --seeds 0
    .venv/bin/python bench/pg_algorithms.py --report-only          # table, PNG and JSON from finished runs

Every run is configs/gppo_tiny_arith.yaml as shipped (the SFT warm start made once under --out and
shared; LoRA r=8; 32 prompts x 8 samples per iteration in 4 optimizer steps; 800 steps; evaluation of
200 held-out problems every 80 steps) with `run.seed` set and only the variant's overrides:

* gppo: none (GPPO's gradient-preserving clip, GRPO advantages);
* rloo / reinforce_pp / reinforce_pp_baseline: `algorithm.advantage=<name>`;
* reinforce_pp_kl: REINFORCE++ with the paper's KL in the reward (`algorithm.kl_placement=reward
  kl_coef=0.01 kl_estimator=k1`: each token earns -0.01 (log pi - log pi_ref)); not in the default set,
  run it with `--variants reinforce_pp reinforce_pp_kl --json bench/results/pg_kl_reward.json`;
* gspo: `algorithm.clip_mode=gspo algorithm.reduction=seq-mean-token-mean` (the paper's sequence mean,
  its clip ranges 3e-4 / 4e-4);
* cispo: `algorithm.clip_mode=cispo` (weight capped at 1 + 4.0);
* ppo: `algorithm.name=ppo algorithm.critic_warmup=5 algorithm.critic_lr=1e-3` (configs/ppo_tiny_arith.yaml:
  GAE advantages from a critic, 2 more DeepSpeed ranks, trained alone for the first 5 iterations).

Each run goes in its own child process (`rlft train`) under --out (default runs/bench_pg_algorithms);
a finished run is reused, never overwritten, so an interrupted bench continues where it stopped.
Reported: held-out greedy accuracy at the start and the end (mean, sd and range over the seeds that
finished), minutes of RL (the iterations' clocks, evaluations excluded) and the mean sampled response
length; every evaluation of every run in --json (default bench/results/pg_algorithms.json) and the
curves in a PNG beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from recipe_runs import ROOT, curve, finished, plot_seed_curves, train, write_results

RECIPE = "configs/gppo_tiny_arith.yaml"
VARIANTS = {
    "gppo": [],
    "rloo": ["algorithm.advantage=rloo"],
    "reinforce_pp": ["algorithm.advantage=reinforce_pp"],
    "reinforce_pp_baseline": ["algorithm.advantage=reinforce_pp_baseline"],
    "reinforce_pp_kl": ["algorithm.advantage=reinforce_pp", "algorithm.kl_coef=0.01", "algorithm.kl_placement=reward",
                        "algorithm.kl_estimator=k1"],
    "gspo": ["algorithm.clip_mode=gspo", "algorithm.reduction=seq-mean-token-mean"],
    "cispo": ["algorithm.clip_mode=cispo"],
    "ppo": ["algorithm.name=ppo", "algorithm.critic_warmup=5", "algorithm.critic_lr=1e-3"],
}

DEFAULT_VARIANTS = [v for v in VARIANTS if v != "reinforce_pp_kl"]  # the table in the README


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(DEFAULT_VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_pg_algorithms")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "pg_algorithms.json")
    parser.add_argument("--report-only", action="store_true", help="only read finished runs")
    return parser.parse_args(argv)


def run_name(variant: str, seed: int) -> str:
    return f"{variant}_s{seed}"


def spread(values: list[float]) -> str:
    """'mean (sd) [min, max]' over seeds ('mean' alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ({statistics.stdev(values):.3f}) [{min(values):.3f}, {max(values):.3f}]"


def table(args, runs: dict[str, dict[int, dict]]) -> dict[str, dict]:
    rows = {}
    for variant in args.variants:
        done = runs[variant]
        if not done:
            rows[variant] = None
            continue
        finals = {s: r["evaluations"][-1]["accuracy"] for s, r in done.items()}
        rows[variant] = {
            "overrides": VARIANTS[variant], "seeds": sorted(done),
            "start": statistics.mean(r["evaluations"][0]["accuracy"] for r in done.values()),
            "final": finals, "final_mean": statistics.mean(finals.values()),
            "final_sd": statistics.stdev(finals.values()) if len(finals) > 1 else None,
            "rl_minutes": statistics.median(r["rl_minutes"] for r in done.values()),
            "train_length": statistics.mean(r["train_length"] for r in done.values() if r["train_length"]),
        }
    return rows


def print_table(rows: dict[str, dict]) -> None:
    print("\n| variant | overrides | start | final (mean (sd) [min, max]) | per seed | minutes of RL (median) "
          "| sampled length |")
    print("|---|---|---|---|---|---|---|")
    for variant, row in rows.items():
        if row is None:
            print(f"| {variant} | {' '.join(VARIANTS[variant]) or '-'} | - | no finished run | - | - | - |")
            continue
        finals = list(row["final"].values())
        print(f"| {variant} | {' '.join(row['overrides']) or '-'} | {row['start']:.3f} | {spread(finals)} | "
              f"{', '.join(f'{v:.3f}' for v in finals)} | {row['rl_minutes']:.1f} | {row['train_length']:.1f} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:  # seed-major: a partial bench still compares every variant
            for variant in args.variants:
                print(f"running {variant} seed {seed} ...", flush=True)
                train(RECIPE, run_name(variant, seed), seed, args.out, VARIANTS[variant], f"{variant} seed {seed}")
    runs = {v: {s: curve(args.out / run_name(v, s)) for s in args.seeds if finished(args.out / run_name(v, s))}
            for v in args.variants}
    rows = table(args, runs)
    print_table(rows)
    png = args.json.with_suffix(".png")
    plot_seed_curves([("held-out accuracy (greedy, 200 problems)", "policy-gradient variants on the main job's recipe",
                       {v: {s: [(p["step"], p["accuracy"]) for p in r["evaluations"]] for s, r in runs[v].items()}
                        for v in args.variants if runs[v]})], png)
    write_results(args.json, {"recipe": RECIPE, "variants": {v: VARIANTS[v] for v in args.variants},
                              "seeds": args.seeds, "table": rows,
                              "runs": {v: {str(s): r for s, r in done.items()} for v, done in runs.items()}})
    print(f"\ncurves: {png}\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
