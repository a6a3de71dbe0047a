"""End-to-end RL throughput: rlft's tiny GPPO loop vs TRL's GRPOTrainer (HF generate), in completions/s.

    .venv/bin/python bench/e2e_vs_trl.py                          # defaults: rlft 40 steps, TRL 12 steps x 2 thread settings
    .venv/bin/python bench/e2e_vs_trl.py --rlft-steps 80 --trl-steps 24
    .venv/bin/python bench/e2e_vs_trl.py --skip-trl               # rlft only

Both train the same model (the warm-start checkpoint of configs/gppo_tiny_arith.yaml, created by
the recipe if missing) with LoRA r=8 / alpha 16 on the same modules, on the arith train prompts,
rewarded by rlft's arith checker (`task.score`), with group size 8, 64 completions per optimizer
step, one rollout batch of rollout.mini_batches x 64 completions (256 in the recipe) per
generation, at most 32 sampled tokens per completion, temperature 1.0.

* rlft: `rlft.controller.train` on the recipe as shipped (2 vLLM generator actors, 1 reward
  actor, 2 DeepSpeed learner ranks, 4 optimizer steps per rollout batch of 256), with evaluation,
  wandb and plots off. Reported: the run's own `samples_per_s` (RL loop only, roles already
  started) and the median of the per-iteration `perf/samples_per_s` (completions per second) in metrics.jsonl, first
  iteration skipped as warm-up.
* TRL: `GRPOTrainer` in one process (the only learner), HF `generate`, no vLLM,
  per_device_train_batch_size 32 x gradient_accumulation_steps 2 = 64 completions = 8 prompts x 8
  per optimizer step, generation_batch_size 256 (one generation feeds 4 optimizer steps, as in
  rlft); once per `--trl-threads` entry (torch intra-op
  threads: 2 is torch's default here, and on a shared machine its OpenMP threads stall whenever
  another process holds a core, so 1 thread is also measured). Reported: completions/s between
  the end of the first (warm-up) generation cycle and the end of the last.

Each system runs in its own child process (this script with `--worker`), one after the other,
so nothing is shared and a crash of one is reported instead of ending the benchmark. If TRL
cannot run here, its row shows why. Ratios are against the fastest TRL run. Goal: rlft >= 10x TRL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "configs/gppo_tiny_arith.yaml"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rlft-steps", type=int, default=40,
                   help="rlft optimizer steps (rollout.mini_batches per rollout batch; the first batch is warm-up)")
    p.add_argument("--trl-steps", type=int, default=12,
                   help="TRL optimizer steps, a multiple of the recipe's rollout.mini_batches (the first generation is warm-up)")
    p.add_argument("--completions-per-step", type=int, default=64)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=32, help="max completion tokens")
    p.add_argument("--trl-micro-batch", type=int, default=32, help="TRL per-device batch (rlft's micro_batch_size)")
    p.add_argument("--trl-threads", default="2,1",
                   help="comma list: one TRL run per torch thread count (2 = torch's default on 2 cores)")
    p.add_argument("--run-name", default="bench_rlft", help="rlft run folder under runs/")
    p.add_argument("--skip-rlft", action="store_true")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--worker", choices=["rlft", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args()


# ----------------------------------------------------------------- shared set-up
def rlft_config(args):
    from rlft.config import load_config

    overrides = [
        f"train.steps={args.rlft_steps}", f"train.batch_size={args.completions_per_step}",
        f"algorithm.group_size={args.group_size}", f"rollout.max_new_tokens={args.max_tokens}",
        "rollout.temperature=1.0", "rollout.epochs=1", "train.eval_every=0", "eval.num_examples=0", "tracking.wandb=disabled",
        "tracking.plots=false", f"run.name={args.run_name}",
    ]
    return load_config(RECIPE, overrides)


def warm_start_path(cfg) -> Path:
    """Where the recipe's warm start leaves its full checkpoint (what rlft trains from)."""
    from rlft.config import load_config

    ws = cfg.warm_start
    sub = load_config(ws.recipe, [*ws.overrides, f"run.output_dir={cfg.run.output_dir}"])
    return sub.run_dir / "checkpoints" / "final"


# ----------------------------------------------------------------- rlft
def run_rlft(args) -> dict:
    from rlft.controller import train

    cfg = rlft_config(args)
    t0 = time.time()
    summary = train(cfg, show_progress=False)
    wall = time.time() - t0
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    per_iter = [r for r in rows if "perf/samples_per_s" in r][1:]  # first iteration = warm-up
    return {
        "completions_per_s": summary["samples_per_s"],
        "iter_completions_per_s": statistics.median(r["perf/samples_per_s"] for r in per_iter) if per_iter else None,
        "steps": cfg.train.steps, "completions": summary["iterations"] * cfg.train.batch_size * cfg.rollout.mini_batches,
        "setup_s": wall - summary["seconds"], "loop_s": summary["seconds"],
        "reward": statistics.mean(r["reward/mean"] for r in per_iter) if per_iter else None,
        "length": statistics.mean(r["rollout/response_length"] for r in per_iter) if per_iter else None,
        "step_seconds": [round(r["perf/step_seconds"], 2) for r in rows if "perf/step_seconds" in r],
        "unit": f"iteration ({cfg.train.batch_size * cfg.rollout.mini_batches} completions, "
                f"{cfg.rollout.mini_batches} optimizer steps)",
    }


# ----------------------------------------------------------------- TRL
def trl_reward(task, examples):
    """TRL reward function: rlft's arith checker on each completion (`idx` is a dataset column)."""

    def arith_correct(completions, idx, **_):
        return [float(task.score(examples[i], c)) for c, i in zip(completions, idx)]

    return arith_correct


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, *a, **k):
            self.begin = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

    return StepTimer()


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlft.data.tasks import build_task

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = rlft_config(args)
    model_path = warm_start_path(cfg)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"{model_path} missing: run the rlft side first (it creates the warm start)")
    task = build_task(cfg.task)
    examples = task.split("train")[: 2 * args.trl_steps * args.completions_per_step]
    data = Dataset.from_dict({"prompt": [ex.prompt for ex in examples], "idx": list(range(len(examples)))})
    grpo = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="rlft_bench_trl_"), max_steps=args.trl_steps,
        per_device_train_batch_size=args.trl_micro_batch,
        gradient_accumulation_steps=args.completions_per_step // args.trl_micro_batch,
        generation_batch_size=args.completions_per_step * cfg.rollout.mini_batches,  # as rlft: one batch, k steps
        num_generations=args.group_size, max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0,
        learning_rate=cfg.train.lr, beta=0.0, use_vllm=False, use_cpu=True, bf16=False,
        model_init_kwargs={"dtype": torch.float32}, logging_steps=1, report_to="none", save_strategy="no",
        disable_tqdm=True, seed=cfg.run.seed, dataloader_num_workers=0,
    )
    lora = LoraConfig(r=cfg.peft.r, lora_alpha=cfg.peft.alpha, lora_dropout=cfg.peft.dropout,
                      target_modules=list(cfg.peft.target_modules), task_type="CAUSAL_LM")
    timer = step_timer()
    trainer = GRPOTrainer(model=str(model_path), reward_funcs=trl_reward(task, examples), args=grpo,
                          train_dataset=data, processing_class=AutoTokenizer.from_pretrained(model_path),
                          peft_config=lora, callbacks=[timer])
    trainer.train()
    shutil.rmtree(grpo.output_dir, ignore_errors=True)
    # Time whole generation cycles (one generation + k optimizer steps), skipping the first one.
    k = cfg.rollout.mini_batches
    cycle_ends = timer.ends[k - 1 :: k]
    logs = [h for h in trainer.state.log_history if "reward" in h][1:]  # logged once per generation
    cycles = len(cycle_ends) - 1
    per_cycle = k * args.completions_per_step
    ends = timer.ends
    return {
        "completions_per_s": per_cycle * cycles / (cycle_ends[-1] - cycle_ends[0]) if cycles > 0 else None,
        "iter_completions_per_s": statistics.median(per_cycle / (b - a) for a, b in zip(cycle_ends, cycle_ends[1:]))
        if cycles > 0 else None,
        "steps": len(ends), "completions": args.completions_per_step * len(ends),
        "setup_s": timer.begin - t0, "loop_s": ends[-1] - timer.begin,
        "reward": statistics.mean(h["reward"] for h in logs) if logs else None,
        "length": statistics.mean(h["completions/mean_length"] for h in logs) if logs else None,
        "step_seconds": [round(b - a, 2) for a, b in zip([timer.begin, *ends], ends)],
        "unit": f"optimizer step ({args.completions_per_step} completions; one generation of {per_cycle} every {k})",
        "threads": torch.get_num_threads(), "versions": versions(),
    }


def versions() -> str:
    import importlib.metadata as md

    return ", ".join(f"{p} {md.version(p)}" for p in ("trl", "transformers", "peft", "torch"))


# ----------------------------------------------------------------- driver
def worker(args) -> None:
    """Child process: run one system, write its result (or the error) as JSON."""
    try:
        result = run_rlft(args) if args.worker == "rlft" else run_trl(args)
    except BaseException as exc:  # noqa: BLE001 - reported, not raised
        hint = " (install it: pip install trl==1.16.0)" if isinstance(exc, ImportError) and args.worker == "trl" else ""
        result = {"error": f"{type(exc).__name__}: {exc}{hint}", "traceback": traceback.format_exc()[-3000:]}
    Path(args.out).write_text(json.dumps(result))


def spawn(system: str, argv: list[str], threads: int = 0) -> dict:
    """Run one system in a child process; a hard crash becomes an error entry with the stderr tail."""
    out = Path(tempfile.mkstemp(prefix=f"bench_{system}_", suffix=".json")[1])
    print(f"--- running {system} ...", flush=True)
    t0 = time.time()
    extra = ["--threads", str(threads)] if threads else []
    proc = subprocess.run([sys.executable, __file__, *argv, *extra, "--worker", system, "--out", str(out)],
                          cwd=ROOT, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr[-4000:])
    text = out.read_text() if out.exists() else ""
    out.unlink(missing_ok=True)
    if not text:
        return {"error": f"{system} process exited with code {proc.returncode}",
                "traceback": proc.stderr[-3000:]}
    result = json.loads(text)
    print(f"--- {system} finished in {time.time() - t0:.0f} s", flush=True)
    return result


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    trl = max((r.get("completions_per_s") or 0 for n, r in results.items() if n.startswith("TRL")), default=0)
    table = Table(title=f"end to end: tiny model, arith, group {args.group_size}, {args.completions_per_step} "
                        f"completions/step, <= {args.max_tokens} tokens, temperature 1, LoRA r=8")
    for col in ("system", "completions/s", "per-iteration median", "ratio vs best TRL", "steps", "completions",
                "setup s", "loop s", "mean reward", "mean length"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for name, r in results.items():
        if "error" in r:
            table.add_row(name, "[red]failed[/red]", "-", "-", "-", "-", "-", "-", "-", "-")
            continue
        cps = r["completions_per_s"]
        ratio = f"{cps / trl:.1f}x" if trl and cps else "-"
        table.add_row(name, fmt(cps, ".2f"), fmt(r["iter_completions_per_s"], ".2f"), ratio, str(r["steps"]),
                      str(r["completions"]), fmt(r["setup_s"], ".0f"), fmt(r["loop_s"], ".1f"),
                      fmt(r["reward"], ".3f"), fmt(r["length"], ".1f"))
    Console(width=170).print(table)
    print("completions/s: rlft = summary['completions_per_s'] (whole RL loop); TRL = generation cycles 2..N (one\n"
          "generation + its optimizer steps). 'per-iteration median' skips the first iteration / cycle. Ratios are against the fastest TRL row. Goal: rlft >= 10x TRL.")
    for name, r in results.items():
        if r.get("step_seconds"):
            print(f"{name}: seconds per {r['unit']}: {r['step_seconds']}")
        if r.get("versions"):
            print(f"{name}: {r['versions']}, torch threads {r['threads']}")
    for name, r in results.items():
        if "error" in r:
            print(f"\n{name} could not run: {r['error']}\n{r.get('traceback', '')}")


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)
    os.chdir(ROOT)  # the recipe and runs/ are relative to the checkout
    argv = [a for a in sys.argv[1:]]
    results: dict[str, dict] = {}
    if not args.skip_rlft:  # first: it creates the warm-start checkpoint TRL also uses
        results["rlft GPPO (2 gen + 2 learners)"] = spawn("rlft", argv)
    if not args.skip_trl:
        for threads in [int(t) for t in args.trl_threads.split(",")]:
            results[f"TRL GRPOTrainer ({threads} thread{'s' if threads > 1 else ''})"] = spawn("trl", argv, threads)
    print_table(results, args)


if __name__ == "__main__":
    main()
