"""What each PEFT method costs to ship to the generators, and what it learns on one budget.

    .venv/bin/python bench/peft_methods.py                       # both parts
    .venv/bin/python bench/peft_methods.py --part sync --models tiny
    .venv/bin/python bench/peft_methods.py --part accuracy --steps 400

Part `sync` (tiny model and SmolLM2-135M-Instruct): for each method, one inline run (1 vLLM generator,
1 DeepSpeed rank, GPPO on fixed rows) takes an optimizer step and publishes, `--rounds` times
after one warm-up; median bytes and seconds per sync (export + transfer + apply in the engine,
without the parity probe). LoRA and PiSSA ship adapters (PiSSA as a rank-2r LoRA), PaCA a
rank-r LoRA with a column selector, LIFT sparse entries, HFT whole tensors, full fine-tuning
every weight. Ratios are to LoRA of the same rank in the same run (LIFT's budget equals it).

Part `accuracy`: the main job's recipe (configs/gppo_tiny_arith.yaml: 2 generators, 2 learner
ranks, the same SFT warm start) with each method for `--steps` optimizer steps and each of
`--seeds`; held-out accuracy at the start and end (mean, sd and per seed), median seconds per
iteration and per sync, and the sync's share of the iteration (goal < 1%). Each run in its own
child process, one at a time, its run folder in the bench's temporary folder; the load average is
printed before and after.

Each part writes its raw results (every method's numbers per model or per seed, the machine) as
JSON: --json with the part's name appended (default bench/results/peft_methods_sync.json and
bench/results/peft_methods_accuracy.json), so running one part leaves the other's file alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recipe_runs import ROOT, write_results

RECIPE = "configs/gppo_tiny_arith.yaml"
METHODS = ["lora", "pissa", "paca", "lift", "hft", "full"]
PAYLOADS = {"lora": "lora", "pissa": "lora (2r)", "paca": "lora (selector)", "lift": "sparse", "hft": "partial",
            "full": "dense"}
# Learning rates for the accuracy part: the adapters as the recipe; methods that move base weights
# directly need smaller steps (full fine-tuning at 1e-4 already lost accuracy on this task).
LR = {"lora": 1e-3, "pissa": 1e-3, "paca": 1e-3, "lift": 1e-4, "hft": 2e-5, "full": 2e-5}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["sync", "accuracy", "both"], default="both")
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m-instruct"])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (PaCA columns, LIFT budget)")
    p.add_argument("--rounds", type=int, default=5, help="timed syncs per method (after one warm-up)")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps of each accuracy run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--lr", nargs="*", default=[], metavar="METHOD=LR", help="learning rate of a method (default: LR)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "peft_methods.json",
                   help="raw results; each part writes <stem>_<part>.json beside it")
    p.add_argument("--worker", choices=["sync"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args()


def peft_overrides(method: str, rank: int) -> dict:
    """The method's peft section: rank and alpha 2 x rank for the methods that take them (not hft, full)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from rlft.peft import PEFT_METHODS

    fields = PEFT_METHODS[method].config_cls.model_fields
    peft = {"method": method, **{k: v for k, v in {"r": rank, "alpha": 2 * rank}.items() if k in fields}}
    if method == "lift":
        peft["lift_update_interval"] = 2  # a refresh inside the timed rounds: its union ships once
    return peft


def sync_worker(args) -> None:
    """One method on one model: warm-up, then timed optimizer step + publish rounds."""
    sys.path.insert(0, str(ROOT))
    from rlft.control import Controller
    from tests.helpers import rl_config, synthetic_rollout_rows

    with tempfile.TemporaryDirectory() as tmp:
        over = {"peft": peft_overrides(args.method, args.rank), "learner": {"zero_stage": 0},
                "sync": {"weights": "merged" if args.method == "full" else "adapter", "parity_every": 0},
                "model": {"name": args.model}, "generator": {"count": 1, "kv_cache_mb": 256}}
        if args.model != "tiny":
            over["train"] = {"max_length": 128}
            over["generator"]["max_model_len"] = 512
        ctl = Controller(rl_config(Path(tmp), "bench", **over), show_progress=False)
        ctl.setup()
        try:
            rows = synthetic_rollout_rows(ctl)
            found = []
            for _ in range(args.rounds + 1):
                ctl.optimize(rows)
                found.append(ctl.sync.publish())
            parity = ctl.sync.check_parity()
            total = sum(p.numel() for p in ctl.learners.members[0].engine.module.parameters())
            trainable = sum(p.numel() for p in ctl.learners.members[0].engine.module.parameters() if p.requires_grad)
        finally:
            ctl.close()
    timed = found[1:]
    Path(args.out).write_text(json.dumps({
        "bytes": statistics.median(m["sync/bytes"] for m in timed),
        "max_bytes": max(m["sync/bytes"] for m in timed),
        "seconds": statistics.median(m["sync/seconds"] for m in timed),
        "parity": parity["sync/parity_max_abs_diff"], "trainable": trainable, "total": total,
    }))


def run_child(argv: list[str], out: Path, log: Path) -> dict:
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, *argv, "--out", str(out)], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode or not out.exists():
        return {"error": f"exit {done.returncode}, see {log}"}
    return json.loads(out.read_text())


def part_sync(args, work: Path) -> dict:
    found = {}
    for model in args.models:
        rows = {}
        for method in args.methods:
            print(f"[sync] {model} {method} ...", flush=True)
            rows[method] = run_child([__file__, "--worker", "sync", "--model", model, "--method", method,
                                      "--rank", str(args.rank), "--rounds", str(args.rounds)],
                                     work / f"sync_{model}_{method}.json", work / f"sync_{model}_{method}.log")
        lora = rows.get("lora", {})
        print(f"\nSync per update, {model} (rank {args.rank}; median of {args.rounds}; ratios to LoRA)")
        print("| method | kind | trainable params | bytes/sync | x LoRA bytes | max bytes | s/sync | x LoRA s | parity max |")
        print("|---|---|---|---|---|---|---|---|---|")
        for method, r in rows.items():
            if "error" in r:
                print(f"| {method} | {PAYLOADS.get(method, '?')} | {r['error']} |")
                continue
            xb = r["bytes"] / lora["bytes"] if "bytes" in lora else float("nan")
            xs = r["seconds"] / lora["seconds"] if "seconds" in lora else float("nan")
            print(f"| {method} | {PAYLOADS.get(method, '?')} | {r['trainable']:,} / {r['total']:,} | {r['bytes']:,.0f} | "
                  f"{xb:.2f} | {r['max_bytes']:,.0f} | {r['seconds']:.3f} | {xs:.2f} | {r['parity']:.1e} |")
        found[model] = rows
    return found


def accuracy_run(args, work: Path, method: str, lr: float, seed: int) -> dict:
    name = f"peft_{method}_lr{lr:g}_s{seed}"
    peft = [f"peft.{k}={v}" for k, v in peft_overrides(method, args.rank).items() if k != "lift_update_interval"]
    over = [f"run.name={name}", f"run.output_dir={work / 'runs'}", f"run.seed={seed}", *peft,
            "learner.zero_stage=0", f"train.steps={args.steps}",
            f"train.lr={lr}", f"train.eval_every={args.steps // 2}", "tracking.wandb=disabled", "tracking.plots=false",
            "sync.weights=" + ("merged" if method == "full" else "adapter")]
    print(f"[accuracy] rlft train {RECIPE} {' '.join(over)}", flush=True)
    t0 = time.time()
    with open(work / f"{name}.log", "w") as handle:
        done = subprocess.run([sys.executable, "-m", "rlft.cli", "train", RECIPE, *over], cwd=ROOT,
                              stdout=handle, stderr=subprocess.STDOUT)
    metrics = work / "runs" / name / "metrics.jsonl"
    if done.returncode or not metrics.exists():
        return {"error": f"exit {done.returncode}, see {work / f'{name}.log'}"}
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evals = [(m["step"], m["eval/accuracy"]) for m in lines if "eval/accuracy" in m]
    iters = [m for m in lines if "perf/step_seconds" in m][1:]  # the first iteration warms up
    return {"seed": seed, "lr": lr, "start": evals[0][1], "end": evals[-1][1], "evaluations": evals,
            "iter_s": statistics.median(m["perf/step_seconds"] for m in iters),
            "sync_s": statistics.median(m["sync/seconds"] for m in iters),
            "bytes": statistics.median(m["sync/bytes"] for m in iters), "wall": time.time() - t0,
            "step_seconds": [m["perf/step_seconds"] for m in iters]}


def part_accuracy(args, work: Path) -> dict:
    rates = {**LR, **{k: float(v) for k, v in (item.split("=") for item in args.lr)}}
    rows = {method: [accuracy_run(args, work, method, rates[method], seed) for seed in args.seeds]
            for method in args.methods}
    print(f"\nGPPO on the main job's recipe, {args.steps} optimizer steps, seeds {args.seeds}")
    print("| method | lr | accuracy start -> end (mean ± sd) | per seed | s/iteration | s/sync | sync share | bytes/sync |")
    print("|---|---|---|---|---|---|---|---|")
    for method, runs in rows.items():
        done = [r for r in runs if "error" not in r]
        if not done:
            print(f"| {method} | {rates[method]:g} | {runs[0]['error']} |")
            continue
        ends = [r["end"] for r in done]
        sd = statistics.stdev(ends) if len(ends) > 1 else 0.0
        iter_s = statistics.median(r["iter_s"] for r in done)
        sync_s = statistics.median(r["sync_s"] for r in done)
        print(f"| {method} | {rates[method]:g} | {done[0]['start']:.3f} -> {statistics.mean(ends):.3f} ± {sd:.3f} | "
              f"{', '.join(f'{e:.3f}' for e in ends)} | {iter_s:.2f} | {sync_s:.3f} | {100 * sync_s / iter_s:.1f}% | "
              f"{statistics.median(r['bytes'] for r in done):,.0f} |")
        for r in runs:
            if "error" in r:
                print(f"|  | | a seed failed: {r['error']} |")
    return rows


def main() -> None:
    args = parse_args()
    if args.worker:
        return sync_worker(args)
    work = Path(tempfile.mkdtemp(prefix="rlft_bench_peft_"))
    print(f"load average before: {os.getloadavg()}; logs in {work}", flush=True)
    settings = {"rank": args.rank, "methods": args.methods}
    if args.part in ("sync", "both"):
        found = part_sync(args, work)
        path = write_results(args.json.with_name(f"{args.json.stem}_sync.json"),
                             {**settings, "models": args.models, "rounds": args.rounds, "payloads": PAYLOADS,
                              "sync": found})
        print(f"raw results: {path}")
    if args.part in ("accuracy", "both"):
        found = part_accuracy(args, work)
        path = write_results(args.json.with_name(f"{args.json.stem}_accuracy.json"),
                             {**settings, "recipe": RECIPE, "steps": args.steps, "seeds": args.seeds,
                              "accuracy": found})
        print(f"raw results: {path}")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
