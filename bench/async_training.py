"""Asynchronous training on SmolLM2: throughput for rollout.max_staleness k = 0, 1, 2, 4 with both weight
transports, and the held-out accuracy after the same number of samples, in one invocation.

    PYTHONPATH=. .venv/bin/python bench/async_training.py                 # 8 runs, ~45 min on 2 cores
    PYTHONPATH=. .venv/bin/python bench/async_training.py --steps 4 --ks 0 2 --transports collective

Each run is the SmolLM2 sums recipe (configs/gppo_smollm2_sums.yaml: GPPO, LoRA r=16 merged into the
synced weights, one learner rank, one vLLM generator, local mode) for --steps iterations; k >= 1 runs
with rollout.in_flight_updates (weights loaded while the generator samples). The learner's threads are
what `learner.threads_per_rank: auto` gives each mode (all cores when generation and training take
turns, a share when they overlap). Clocks: `perf/step_seconds` summed over the iterations (generation
of the first batch included, evaluation and role start-up not), samples = completions trained on.
Runs are ordered k-major, transports alternating, so drifting load hits both alike. Raw results to
bench/results/async_training.json; a table printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from recipe_runs import ROOT, run_summary, train, write_results

RECIPE = "configs/gppo_smollm2_sums.yaml"


def run_metrics(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/loss" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    seconds = sum(r["perf/step_seconds"] for r in trained)
    samples = sum(r["perf/samples_per_s"] * r["perf/step_seconds"] for r in trained)
    return {
        "iterations": len(trained), "rl_seconds": seconds, "samples": round(samples),
        "samples_per_s": samples / seconds,
        "step_seconds": [r["perf/step_seconds"] for r in trained],
        "median_step_seconds_after_first": statistics.median(r["perf/step_seconds"] for r in trained[1:]),
        "wait_generation_s": [r.get("perf/time_wait_generation") for r in trained],
        "generate_s": [r["perf/time_generate"] for r in trained], "train_s": [r["perf/time_train"] for r in trained],
        "sync_s": [r["sync/seconds"] for r in trained],
        "staleness": [r["rollout/staleness"] for r in trained],
        "spanning_versions": [r.get("rollout/spanning_versions", 0.0) for r in trained],
        "response_length": statistics.mean(r["rollout/response_length"] for r in trained),
        "reward_mean": [r["reward/mean"] for r in trained],
        "accuracy_start": evals[0]["eval/accuracy"], "accuracy_end": evals[-1]["eval/accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="iterations per run (one optimizer step each)")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--transports", nargs="+", default=["object_store", "collective"])
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / "async_training")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "async_training.json")
    args = parser.parse_args()
    results = []
    for k in args.ks:
        for transport in args.transports:
            name = f"k{k}_{transport}"
            overrides = [f"train.steps={args.steps}", "train.eval_every=0", f"eval.num_examples={args.eval_examples}",
                         f"rollout.max_staleness={k}", f"rollout.in_flight_updates={str(k > 0).lower()}",
                         f"sync.transport={transport}", "train.save_every=0"]
            started = time.time()
            wall = train(RECIPE, name, 0, args.out, overrides, name)
            found = {"k": k, "transport": transport, "in_flight_updates": k > 0, "wall_seconds": wall,
                     "finished_at": started, **run_metrics(args.out / name),
                     "loop_seconds": run_summary(args.out / name).get("seconds")}
            results.append(found)
            print(f"{name}: {found['samples_per_s']:.3f} samples/s, step {found['median_step_seconds_after_first']:.1f} s, "
                  f"accuracy {found['accuracy_start']:.3f} -> {found['accuracy_end']:.3f}", flush=True)
    base = {r["transport"]: r["samples_per_s"] for r in results if r["k"] == 0}
    print(f"\n| k | transport | samples/s | x k=0 | median s/iteration (after the 1st) | sync s (median) | "
          f"staleness (mean) | responses spanning versions | accuracy start -> end |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = r["samples_per_s"] / base[r["transport"]] if r["transport"] in base else float("nan")
        print(f"| {r['k']} | {r['transport']} | {r['samples_per_s']:.3f} | {ratio:.2f} | "
              f"{r['median_step_seconds_after_first']:.1f} | {statistics.median(r['sync_s']):.2f} | "
              f"{statistics.mean(r['staleness']):.2f} | {statistics.mean(r['spanning_versions']):.2f} | "
              f"{r['accuracy_start']:.3f} -> {r['accuracy_end']:.3f} |")
    write_results(args.json, {"recipe": RECIPE, "steps": args.steps, "eval_examples": args.eval_examples,
                              "runs": results})
    print(f"\nraw results: {args.json}")


if __name__ == "__main__":
    main()
