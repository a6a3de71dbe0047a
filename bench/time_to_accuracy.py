"""Time to accuracy: rlft's real-model recipe against TRL's GRPOTrainer on the same problem, same cores.

    .venv/bin/pip install trl==1.16.0                                  # the `bench` extra
    .venv/bin/python bench/time_to_accuracy.py                         # seeds 0 1 2, both systems
    .venv/bin/python bench/time_to_accuracy.py --seeds 0 --target 0.5
    .venv/bin/python bench/time_to_accuracy.py --report-only           # table, PNG, JSON from finished runs
    .venv/bin/python bench/e2e_vs_trl.py --time-to-accuracy ...        # the same, from the throughput bench

Both systems train SmolLM2-135M-Instruct on configs/gppo_smollm2_sums.yaml's problem ("What is 47 + 38?",
answer = last integer of the reply) and are scored by the same checker (`task.score`):

* the same prompts in the same order: TRL's dataset is rlft's prompt stream for the seed (its
  EpochSampler order over the train split), and TRL's shuffling is off;
* the same sizes: 4 prompts x 8 samples = 32 completions per optimizer step, one generation per
  step, micro-batches of 4 (TRL: per-device batch 4, 8 accumulation steps), <= 64 new tokens,
  temperature 0.7, 40 steps, LoRA r=16 alpha=32 on the recipe's modules, AdamW lr 2e-4 with 1
  warm-up step then constant, grad clip 1.0, no KL, float32 weights and compute on both sides;
* the same loss in effect: one optimizer step per generation makes the importance ratio 1 at the
  step, so rlft's GPPO and TRL's clipped loss (eps 0.2 / 0.28, loss_type "dapo": the token mean
  over the step, as rlft) give the same policy gradient; group-normalised advantages on both;
* TRL at its best on CPU: gradient checkpointing off (TRL turns it on by default; rlft does not
  use it), HF `generate` (TRL's vLLM mode needs a server or colocated engine on a GPU-enabled
  vLLM build), torch's default threads (2).

The clocks are defined the same way: minutes of RL = the sum of every optimizer step's seconds,
the first included: rlft's `perf/step_seconds` (generate, score, train, sync); TRL's time from
`on_step_begin` to `on_step_end` (generation, scoring and training happen inside the step).
Evaluations (greedy, the 200 held-out questions, <= 64 tokens, every 10 steps and before the first)
are outside both clocks and reported beside: rlft evaluates through its vLLM generator, TRL through
HF `generate` on the model it trains. Role start-up / model loading are outside both clocks.

Reported per system and seed: accuracy at each evaluation, minutes to the first evaluation at or
above --target, accuracy within a fixed budget (the last evaluation reached within the shorter
system's mean minutes of RL), mean completion length while training. rlft's runs are `rlft train` of the recipe
(reused from bench/real_model.py's folder when finished there, never overwritten); TRL runs in a
child process per seed whose result is kept as JSON under --out. Raw results: --json; curves: --png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from real_model import RECIPE
from recipe_runs import ROOT, curve, mean_std, plot_minutes_curves, train, write_results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.5, help="held-out accuracy to reach")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps (the recipe's 40)")
    parser.add_argument("--eval-every", type=int, default=10, help="evaluate every N steps (the recipe's 10)")
    parser.add_argument("--trl-eval-examples", type=int, help="TRL evaluates only the first N held-out questions "
                        "(a quick check; the default is the recipe's 200, as rlft)")
    parser.add_argument("--skip-rlft", action="store_true")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--rlft-out", type=Path, default=ROOT / "runs" / "bench_real_model",
                        help="rlft run folders (bench/real_model.py's by default: its finished seeds are reused)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_time_to_accuracy", help="TRL results")
    parser.add_argument("--png", type=Path, default=ROOT / "bench" / "results" / "time_to_accuracy.png")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "time_to_accuracy.json")
    parser.add_argument("--report-only", action="store_true", help="only read finished runs")
    parser.add_argument("--worker-seed", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------- TRL (child process)
def greedy_accuracy(model, tokenizer, task, examples, max_new_tokens: int, batch: int = 50) -> dict:
    """Greedy replies to `examples` with HF generate (chat template, as rlft encodes prompts), scored by the task."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    correct, lengths = 0.0, []
    with torch.no_grad():
        for start in range(0, len(examples), batch):
            chunk = examples[start:start + batch]
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": ex.prompt}], tokenize=False,
                                                   add_generation_prompt=True) for ex in chunk]
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
            for ex, ids in zip(chunk, out[:, encoded["input_ids"].shape[1]:]):
                ids = ids.tolist()
                length = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
                lengths.append(length)
                correct += task.score(ex, tokenizer.decode(ids[:length], skip_special_tokens=True))
    model.train(was_training)
    tokenizer.padding_side = side
    return {"accuracy": correct / len(examples), "length": statistics.mean(lengths)}


def run_trl(seed: int, steps: int, eval_every: int, eval_examples: int | None = None) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from e2e_vs_trl import trl_reward, versions
    from rlft.config import load_config
    from rlft.data.models import resolve_model
    from rlft.data.sampler import EpochSampler
    from rlft.data.tasks import build_task

    cfg = load_config(RECIPE, [f"run.seed={seed}"])
    assert cfg.model.dtype == "float32", "both sides run the recipe's float32"
    model_path = str(resolve_model(cfg.model).resolve())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    task = build_task(cfg.task)
    held_out = task.split("eval")[: eval_examples or cfg.eval.num_examples]
    group = cfg.algorithm.group_size
    prompts_per_step = cfg.train.batch_size // group
    # rlft's prompt stream: RolloutSource draws batch_size / group prompts per step from this sampler.
    examples = EpochSampler(len(task.split("train")), seed).next_batch(task.split("train"), prompts_per_step * steps)
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": ex.prompt}] for ex in examples],
                              "idx": list(range(len(examples)))})

    class Clock(TrainerCallback):
        """Seconds inside each optimizer step; greedy evaluations between steps, outside the clock."""

        def __init__(self):
            self.step_seconds: list[float] = []
            self.evaluations: list[dict] = []

        def evaluate(self, model, step: int) -> None:
            t0 = time.perf_counter()
            found = greedy_accuracy(model, tokenizer, task, held_out, cfg.eval.max_new_tokens)
            self.evaluations.append({"step": step, "rl_minutes": sum(self.step_seconds) / 60, **found,
                                     "eval_seconds": time.perf_counter() - t0})
            print(f"TRL seed {seed} step {step}: accuracy {found['accuracy']:.3f}", flush=True)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.evaluate(model, 0)

        def on_step_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.step_seconds.append(time.perf_counter() - self.began)
            if state.global_step % eval_every == 0 or state.global_step == state.max_steps:
                self.evaluate(model, state.global_step)

    grpo = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="rlft_bench_trl_"), max_steps=steps, seed=seed,
        per_device_train_batch_size=cfg.train.micro_batch_size,
        gradient_accumulation_steps=cfg.train.batch_size // cfg.train.micro_batch_size,
        num_generations=group, max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, num_iterations=1,
        learning_rate=cfg.train.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=cfg.train.warmup_steps,
        weight_decay=cfg.train.weight_decay, adam_beta1=cfg.train.betas[0], adam_beta2=cfg.train.betas[1],
        max_grad_norm=cfg.train.grad_clip, beta=0.0, epsilon=cfg.algorithm.eps_low, epsilon_high=cfg.algorithm.eps_high,
        loss_type="dapo", scale_rewards="group", shuffle_dataset=False, gradient_checkpointing=False,
        use_vllm=False, use_cpu=True, bf16=False, model_init_kwargs={"dtype": torch.float32},
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    lora = LoraConfig(r=cfg.peft.r, lora_alpha=cfg.peft.alpha, lora_dropout=cfg.peft.dropout,
                      target_modules=list(cfg.peft.target_modules), task_type="CAUSAL_LM")
    clock = Clock()
    trainer = GRPOTrainer(model=model_path, reward_funcs=trl_reward(task, examples), args=grpo, train_dataset=data,
                          processing_class=tokenizer, peft_config=lora, callbacks=[clock])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return {"evaluations": clock.evaluations, "step_seconds": [round(s, 2) for s in clock.step_seconds],
            "rl_minutes": sum(clock.step_seconds) / 60,
            "eval_minutes": sum(e["eval_seconds"] for e in clock.evaluations) / 60,
            "train_length": statistics.mean(h["completions/mean_length"] for h in logs),
            "train_reward": [round(h["reward"], 4) for h in logs], "threads": torch.get_num_threads(),
            "versions": versions(), "prompts": [ex.prompt for ex in examples]}


# ----------------------------------------------------------------- driver
def rlft_seed(args, seed: int) -> dict | None:
    name = f"sums_seed{seed}"
    if not args.report_only and not args.skip_rlft:
        args.rlft_out.mkdir(parents=True, exist_ok=True)
        overrides = [f"train.steps={args.steps}", f"train.eval_every={args.eval_every}"]
        took = train(RECIPE, name, seed, args.rlft_out, overrides, f"rlft seed {seed}")
        print(f"rlft seed {seed}: {took / 60:.1f} min{' (reused)' if not took else ''}", flush=True)
    run_dir = args.rlft_out / name
    return curve(run_dir) if (run_dir / "finished.json").is_file() else None


def trl_seed(args, seed: int) -> dict | None:
    path = args.out / f"trl_seed{seed}.json"
    if not path.is_file() and not args.report_only and not args.skip_trl:
        args.out.mkdir(parents=True, exist_ok=True)
        log = args.out / f"trl_seed{seed}.log"
        print(f"TRL seed {seed}: running (log {log}) ...", flush=True)
        started = time.time()
        with log.open("w") as stream:
            code = subprocess.call([sys.executable, __file__, "--worker-seed", str(seed), "--steps", str(args.steps),
                                    "--eval-every", str(args.eval_every), "--out", str(args.out),
                                    *(["--trl-eval-examples", str(args.trl_eval_examples)] if args.trl_eval_examples else [])],
                                   cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
        if code:
            raise SystemExit(f"TRL seed {seed} failed (exit {code}); see {log}")
        print(f"TRL seed {seed}: {(time.time() - started) / 60:.1f} min", flush=True)
    return json.loads(path.read_text()) if path.is_file() else None


def minutes_to(run: dict, target: float) -> float | None:
    return next((p["rl_minutes"] for p in run["evaluations"] if p["accuracy"] >= target), None)


def within(run: dict, minutes: float) -> float:
    return [p["accuracy"] for p in run["evaluations"] if p["rl_minutes"] <= minutes + 1e-9][-1]


def report(results: dict, args) -> dict:
    # The fixed budget is the shorter system's mean minutes of RL: both have evaluations up to it.
    budget = min(statistics.mean(r["rl_minutes"] for r in runs.values()) for runs in results.values())
    summary = {}
    print(f"\n{RECIPE}: {args.steps} steps, eval every {args.eval_every}, target {args.target}")
    print("| system | seed | evaluations (step: accuracy) | min to target | acc within budget | RL min | "
          "s/step (median) | eval min | train length |")
    print("|---|---|---|---|---|---|---|---|---|")
    for system, runs in results.items():
        for seed, run in runs.items():
            reach = minutes_to(run, args.target)
            trace = ", ".join(f"{p['step']}: {p['accuracy']:.3f}" for p in run["evaluations"])
            print(f"| {system} | {seed} | {trace} | {'-' if reach is None else f'{reach:.1f}'} | "
                  f"{within(run, budget):.3f} | {run['rl_minutes']:.1f} | {statistics.median(run['step_seconds']):.1f} | "
                  f"{run['eval_minutes']:.1f} | {run['train_length']:.1f} |")
        reached = [minutes_to(r, args.target) for r in runs.values()]
        summary[system] = {
            "minutes_to_target": reached, "reached": sum(m is not None for m in reached),
            "accuracy_within_budget": [within(r, budget) for r in runs.values()],
            "final_accuracy": [r["evaluations"][-1]["accuracy"] for r in runs.values()],
            "rl_minutes": [r["rl_minutes"] for r in runs.values()],
            "median_step_seconds": [statistics.median(r["step_seconds"]) for r in runs.values()],
            "train_length": [r["train_length"] for r in runs.values()]}
    print(f"\nfixed budget: {budget:.1f} min of RL (the shorter system's mean)")
    print("| system | seeds | reached target | min to target | acc within budget | final acc | RL min | s/step |")
    print("|---|---|---|---|---|---|---|---|")
    for system, s in summary.items():
        times = [m for m in s["minutes_to_target"] if m is not None]
        print(f"| {system} | {len(s['final_accuracy'])} | {s['reached']} | {mean_std(times, fmt='{:.1f}') if times else '-'} | "
              f"{mean_std(s['accuracy_within_budget'])} | {mean_std(s['final_accuracy'])} | "
              f"{statistics.mean(s['rl_minutes']):.1f} | {statistics.mean(s['median_step_seconds']):.1f} |")
    if all(s["reached"] for s in summary.values()) and len(summary) == 2:
        rlft, trl = (statistics.mean(m for m in summary[k]["minutes_to_target"] if m is not None) for k in ("rlft", "TRL"))
        print(f"\nTRL / rlft minutes to {args.target}: {trl / rlft:.2f}x (goal >= 3x)")
        summary["ratio_minutes_to_target"] = trl / rlft
    return {"budget_minutes": budget, "summary": summary}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_seed is not None:
        result = run_trl(args.worker_seed, args.steps, args.eval_every, args.trl_eval_examples)
        (args.out / f"trl_seed{args.worker_seed}.json").write_text(json.dumps(result, indent=1))
        return
    results: dict[str, dict] = {"rlft": {}, "TRL": {}}
    for seed in args.seeds:  # seed-major: a cut-short bench still compares both on the same seeds
        if (run := rlft_seed(args, seed)) is not None:
            results["rlft"][seed] = run
        if (run := trl_seed(args, seed)) is not None:
            results["TRL"][seed] = run
    results = {k: v for k, v in results.items() if v}
    if not results:
        raise SystemExit("no finished runs")
    found = report(results, args)
    plot_minutes_curves(results, args.png, "SmolLM2-135M-Instruct, 2-digit sums, LoRA, float32: rlft vs TRL",
                        args.target)
    write_results(args.json, {"recipe": RECIPE, "target": args.target, "steps": args.steps,
                              "eval_every": args.eval_every, **found,
                              "runs": {k: {s: {key: v for key, v in r.items() if key != "prompts"} for s, r in runs.items()}
                                       for k, runs in results.items()}})
    print(f"\nwrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
