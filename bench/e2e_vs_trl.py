"""End-to-end RL throughput: rlft's GPPO loop vs TRL's GRPOTrainer (HF generate), in completions/s.

    .venv/bin/python bench/e2e_vs_trl.py                          # tiny model (the main job's recipe)
    .venv/bin/python bench/e2e_vs_trl.py --model smollm2          # SmolLM2-135M-Instruct, bfloat16 where native
    .venv/bin/python bench/e2e_vs_trl.py --model smollm2 --rlft-variants sync,one-engine --skip-trl
    .venv/bin/python bench/e2e_vs_trl.py --skip-trl               # rlft only
    .venv/bin/python bench/e2e_vs_trl.py --time-to-accuracy [...]  # bench/time_to_accuracy.py: minutes to a
                                                                  # held-out accuracy on the real-model recipe

Both systems train the same model with LoRA on the same modules and rank, on the same train prompts,
rewarded by rlft's task checker (`task.score`), with the same group size, completions per optimizer
step, completions per generation (rollout.mini_batches optimizer steps per generation in both),
completion length, temperature 1 and dtype:

* tiny: the main job's recipe (configs/gppo_tiny_arith.yaml, its warm start created if missing),
  float32, LoRA r=8, group 8, 4 steps of 64 per generation of 256, <= 32 tokens.
* smollm2: configs/gppo_smollm2_gsm.yaml (gsm_symbolic, chat template), `model.dtype=fast` (bfloat16
  where the CPU has native bf16, as TRL gets with bf16=True), LoRA r=16, group 4, 2 steps of 32 per
  generation of 64, <= 128 tokens.

Rows:
* rlft variants (`--rlft-variants`): `sync` (rollout.max_staleness=0, the recipe's 2 vLLM generators,
  each pinned to its own core, the policy shipped as a LoRA adapter), `overlapped` (max_staleness=1),
  `one-engine` (synchronous, 1 generator on every core), and `merged`, `merged-overlapped`,
  `merged-one-engine` (the same with sync.weights=merged: generators reload every weight with the
  adapter merged in, and generate without LoRA kernels): `rlft.control.train` with evaluation,
  wandb and plots off. Reported: completions
  over the loop's seconds (`summary['samples_per_s']`, roles already started) and the median of the
  per-iteration `perf/samples_per_s`, first iteration skipped as warm-up.
* TRL: `GRPOTrainer` in one process (the only learner), HF `generate`, no vLLM, gradient
  checkpointing off (TRL's GRPOConfig turns it on by default; rlft does not use it), once per
  `--trl-threads` entry (torch intra-op threads; on a shared machine OpenMP threads stall whenever
  another process holds a core, so the tiny model also measures 1 thread). Reported: completions/s
  between the end of the first (warm-up) generation cycle and the end of the last.

Each system runs in its own child process (this script with `--worker`), one after the other,
so nothing is shared and a crash of one is reported instead of ending the benchmark. If TRL
cannot run here, its row shows why. Ratios are against the fastest TRL row. Goals (issue 8):
rlft >= 1.5x TRL on SmolLM2, >= 1.0x on the tiny model. The raw results (every row's per-iteration
seconds and phase split, the shared sizes, the machine) go to --json (default
bench/results/e2e_vs_trl_<model>.json).
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

from recipe_runs import ROOT, write_results


# Per model: the recipe and the sizes both systems share (flags override them).
MODELS = {
    "tiny": dict(recipe="configs/gppo_tiny_arith.yaml", overrides=[], rlft_steps=40, trl_steps=12,
                 completions_per_step=64, mini_batches=4, group_size=8, max_tokens=32, micro_batch=32,
                 trl_threads="2,1", bf16=False, variants="sync,overlapped,merged"),
    "smollm2": dict(recipe="configs/gppo_smollm2_gsm.yaml",
                    overrides=["model.dtype=fast", "sync.parity_tolerance=null", "train.micro_batch_size=4",
                               "train.warmup_steps=0"],
                    rlft_steps=8, trl_steps=8, completions_per_step=32, mini_batches=2, group_size=4,
                    max_tokens=128, micro_batch=8, trl_threads="2", bf16=True, variants="sync,merged,merged-overlapped"),
}
GOALS = {"tiny": 1.0, "smollm2": 1.5}
VARIANTS = {  # rlft rows: overrides on top of the shared ones
    "sync": ["rollout.max_staleness=0", "sync.weights=adapter"],
    "overlapped": ["rollout.max_staleness=1", "sync.weights=adapter"],
    "one-engine": ["rollout.max_staleness=0", "sync.weights=adapter", "generator.count=1"],
    "merged": ["rollout.max_staleness=0", "sync.weights=merged"],
    "merged-overlapped": ["rollout.max_staleness=1", "sync.weights=merged"],
    "merged-one-engine": ["rollout.max_staleness=0", "sync.weights=merged", "generator.count=1"],
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--rlft-steps", type=int,
                   help="rlft optimizer steps, a multiple of the rollout's mini-batches (the first batch is warm-up)")
    p.add_argument("--trl-steps", type=int,
                   help="TRL optimizer steps, a multiple of the rollout's mini-batches (the first generation is warm-up)")
    p.add_argument("--completions-per-step", type=int)
    p.add_argument("--group-size", type=int)
    p.add_argument("--max-tokens", type=int, help="max completion tokens")
    p.add_argument("--trl-micro-batch", type=int, help="TRL per-device batch")
    p.add_argument("--trl-threads",
                   help="comma list: one TRL run per torch thread count (2 = torch's default on 2 cores)")
    p.add_argument("--rlft-variants", help=f"comma list of {', '.join(VARIANTS)} (default per model)")
    p.add_argument("--run-name", default="bench_rlft", help="rlft run folder under runs/ (variant appended)")
    p.add_argument("--skip-rlft", action="store_true")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--json", type=Path, help="raw results (default: bench/results/e2e_vs_trl_<model>.json)")
    p.add_argument("--report-only", action="store_true",
                   help="print the table and draw the PNG (beside --json) from the raw results, running nothing")
    p.add_argument("--worker", choices=["rlft", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=sorted(VARIANTS), default="sync", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    preset = MODELS[args.model]
    for flag, key in (("rlft_steps", "rlft_steps"), ("trl_steps", "trl_steps"), ("group_size", "group_size"),
                      ("completions_per_step", "completions_per_step"), ("max_tokens", "max_tokens"),
                      ("trl_micro_batch", "micro_batch"), ("trl_threads", "trl_threads"), ("rlft_variants", "variants")):
        if getattr(args, flag) is None:
            setattr(args, flag, preset[key])
    args.json = args.json or ROOT / "bench" / "results" / f"e2e_vs_trl_{args.model}.json"
    unknown = set(args.rlft_variants.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"unknown --rlft-variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


# ----------------------------------------------------------------- shared set-up
def rlft_config(args):
    from rlft.config import load_config

    preset = MODELS[args.model]
    overrides = [
        *preset["overrides"], f"rollout.mini_batches={preset['mini_batches']}", *VARIANTS[args.variant],
        f"train.steps={args.rlft_steps}", f"train.batch_size={args.completions_per_step}",
        f"algorithm.group_size={args.group_size}", f"rollout.max_new_tokens={args.max_tokens}",
        "rollout.temperature=1.0", "rollout.epochs=1", "train.eval_every=0", "eval.num_examples=0", "tracking.wandb=disabled",
        "tracking.plots=false", f"run.name={args.run_name}_{args.model}_{args.variant}",
    ]
    return load_config(preset["recipe"], overrides)


# ----------------------------------------------------------------- rlft
def run_rlft(args) -> dict:
    from rlft.control import train

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
        "split": {key: statistics.median(r[f"perf/time_{key}"] for r in per_iter)
                  for key in ("generate", "train", "sync") if per_iter and f"perf/time_{key}" in per_iter[0]},
        "dtype": cfg.model.dtype,
        "unit": f"iteration ({cfg.train.batch_size * cfg.rollout.mini_batches} completions, "
                f"{cfg.rollout.mini_batches} optimizer steps)",
    }


# ----------------------------------------------------------------- TRL
def trl_reward(task, examples):
    """TRL reward function: rlft's arith checker on each completion (`idx` is a dataset column)."""

    def task_correct(completions, idx, **_):
        # conversational prompts give completions as message lists
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(task.score(examples[i], text)) for text, i in zip(texts, idx)]

    return task_correct


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

    from rlft.data.collate import uses_chat_template
    from rlft.data.tasks import build_task
    from rlft.data.models import resolve_dtype
    from rlft.control.warm_start import base_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = rlft_config(args)
    model_path = base_model_path(cfg)  # the rlft side creates a missing warm start
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    chat = uses_chat_template(tokenizer, cfg.data.chat_template)  # as rlft encodes prompts
    bf16 = MODELS[args.model]["bf16"] and resolve_dtype("fast", "cpu") == torch.bfloat16
    task = build_task(cfg.task)
    examples = task.split("train")[: 2 * args.trl_steps * args.completions_per_step]
    prompts = [[{"role": "user", "content": ex.prompt}] if chat else ex.prompt for ex in examples]
    data = Dataset.from_dict({"prompt": prompts, "idx": list(range(len(examples)))})
    grpo = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="rlft_bench_trl_"), max_steps=args.trl_steps,
        per_device_train_batch_size=args.trl_micro_batch,
        gradient_accumulation_steps=args.completions_per_step // args.trl_micro_batch,
        generation_batch_size=args.completions_per_step * cfg.rollout.mini_batches,  # as rlft: one batch, k steps
        num_generations=args.group_size, max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0,
        learning_rate=cfg.train.lr, beta=0.0, use_vllm=False, use_cpu=True, bf16=bf16,
        gradient_checkpointing=False,  # TRL's default is on; rlft does not recompute activations
        model_init_kwargs={"dtype": torch.bfloat16 if bf16 else torch.float32}, logging_steps=1, report_to="none", save_strategy="no",
        disable_tqdm=True, seed=cfg.run.seed, dataloader_num_workers=0,
    )
    lora = LoraConfig(r=cfg.peft.r, lora_alpha=cfg.peft.alpha, lora_dropout=cfg.peft.dropout,
                      target_modules=list(cfg.peft.target_modules), task_type="CAUSAL_LM")
    timer = step_timer()
    trainer = GRPOTrainer(model=str(model_path), reward_funcs=trl_reward(task, examples), args=grpo,
                          train_dataset=data, processing_class=tokenizer,
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
        "threads": torch.get_num_threads(), "versions": versions(), "dtype": "bfloat16" if bf16 else "float32",
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


def spawn(system: str, argv: list[str], threads: int = 0, variant: str = "sync") -> dict:
    """Run one system in a child process; a hard crash becomes an error entry with the stderr tail."""
    out = Path(tempfile.mkstemp(prefix=f"bench_{system}_", suffix=".json")[1])
    print(f"--- running {system} ({variant if system == 'rlft' else f'{threads} threads'}) ...", flush=True)
    t0 = time.time()
    extra = ["--threads", str(threads)] if threads else ["--variant", variant]
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
    preset = MODELS[args.model]
    dtypes = sorted({r["dtype"] for r in results.values() if "dtype" in r})
    table = Table(title=f"end to end: {args.model} ({preset['recipe']}), group {args.group_size}, "
                        f"{args.completions_per_step} completions/step, {preset['mini_batches']} steps per generation, "
                        f"<= {args.max_tokens} tokens, temperature 1, dtype {'/'.join(dtypes)}")
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
          "generation + its optimizer steps). 'per-iteration median' skips the first iteration / cycle. Ratios are against the\n"
          f"fastest TRL row. Goal: rlft >= {GOALS[args.model]}x TRL.")
    for name, r in results.items():
        if r.get("step_seconds"):
            print(f"{name}: seconds per {r['unit']}: {r['step_seconds']}")
        if r.get("split"):
            print(f"{name}: median seconds per iteration: " + ", ".join(f"{k} {v:.2f}" for k, v in r["split"].items()))
        if r.get("versions"):
            print(f"{name}: {r['versions']}, torch threads {r['threads']}")
    for name, r in results.items():
        if "error" in r:
            print(f"\n{name} could not run: {r['error']}\n{r.get('traceback', '')}")


def plot_throughput(results: dict, path: Path, title: str, per_generation: int) -> None:
    """Two panels: completions/s per system (whole loop and per-iteration median), and where an
    iteration's seconds go (rlft: generate / train / sync medians; TRL: its median seconds per
    generation cycle, generation and optimizer steps together)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {n: r for n, r in results.items() if r.get("completions_per_s")}
    names = list(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.9 * len(names) + 2.2))
    y = range(len(names))
    left.barh([i - 0.2 for i in y], [rows[n]["completions_per_s"] for n in names], height=0.4, label="whole loop")
    left.barh([i + 0.2 for i in y], [rows[n]["iter_completions_per_s"] for n in names], height=0.4,
              label="per-iteration median (first skipped)")
    left.set_yticks(list(y), names)
    left.invert_yaxis()
    left.set_xlabel("completions / s (higher is better)")
    left.legend(loc="lower right")
    colours = {"generate": "tab:blue", "train": "tab:orange", "sync": "tab:green", "generate + train": "tab:grey"}
    for i, name in enumerate(names):
        r, start = rows[name], 0.0
        split = r.get("split") or {"generate + train": statistics.median(cycle_seconds(r, per_generation))}
        for phase, seconds in split.items():
            hidden = phase == "generate" and "overlapped" in name  # runs while the learners train
            right.barh(i, seconds, left=start, color=colours.get(phase, "tab:red"), hatch="//" if hidden else None,
                       alpha=0.5 if hidden else 1.0,
                       label=phase if phase not in right.get_legend_handles_labels()[1] else None)
            start += seconds
    right.set_yticks(list(y), [""] * len(names))
    right.invert_yaxis()
    right.set_xlabel("median seconds per phase (hatched: overlapped with training, not on the clock)")
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4)
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cycle_seconds(result: dict, per_generation: int) -> list[float]:
    """TRL's seconds per generation cycle (its optimizer steps summed per generation), the first skipped."""
    steps = result["step_seconds"]
    cycles = [sum(steps[i:i + per_generation]) for i in range(0, len(steps), per_generation)]
    return cycles[1:] or cycles


def main() -> None:
    if "--time-to-accuracy" in sys.argv[1:]:  # the learning race lives in its own script
        import time_to_accuracy

        return time_to_accuracy.main([a for a in sys.argv[1:] if a != "--time-to-accuracy"])
    args = parse_args()
    if args.worker:
        return worker(args)
    os.chdir(ROOT)  # the recipe and runs/ are relative to the checkout
    if args.report_only:
        found = json.loads(Path(args.json).read_text())
        print_table(found["results"], args)
        plot = Path(args.json).with_suffix(".png")
        plot_throughput(found["results"], plot, title_of(args), found["steps_per_generation"])
        print(f"plot: {plot}")
        return
    argv = [a for a in sys.argv[1:]]
    results: dict[str, dict] = {}
    if not args.skip_rlft:  # first: it creates the warm-start checkpoint TRL also uses
        for variant in args.rlft_variants.split(","):
            results[f"rlft GPPO {variant}"] = spawn("rlft", argv, variant=variant)
    if not args.skip_trl:
        for threads in [int(t) for t in args.trl_threads.split(",")]:
            results[f"TRL GRPOTrainer ({threads} thread{'s' if threads > 1 else ''})"] = spawn("trl", argv, threads)
    print_table(results, args)
    best_trl = max((r.get("completions_per_s") or 0 for n, r in results.items() if n.startswith("TRL")), default=0)
    preset = MODELS[args.model]
    write_results(args.json, {
        "model": args.model, "recipe": preset["recipe"], "group_size": args.group_size,
        "completions_per_step": args.completions_per_step, "steps_per_generation": preset["mini_batches"],
        "max_tokens": args.max_tokens, "rlft_steps": args.rlft_steps, "trl_steps": args.trl_steps,
        "goal_vs_trl": GOALS[args.model],
        "vs_best_trl": {n: r["completions_per_s"] / best_trl for n, r in results.items()
                        if best_trl and r.get("completions_per_s")},
        "results": results})
    print(f"raw results: {args.json}")
    plot_throughput(results, Path(args.json).with_suffix(".png"), title_of(args), preset["mini_batches"])


def title_of(args) -> str:
    return (f"{args.model}: GPPO + LoRA, group {args.group_size}, {args.completions_per_step} completions per optimizer "
            f"step, <= {args.max_tokens} tokens, rlft vs TRL GRPOTrainer")


if __name__ == "__main__":
    main()
