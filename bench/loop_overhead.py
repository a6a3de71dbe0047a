"""rlft's RL iteration against the limit its own engines set, and the cost of the weight sync.

    .venv/bin/python bench/loop_overhead.py                    # the main job's sizes, 8 iterations per rlft run
    .venv/bin/python bench/loop_overhead.py --iterations 12 --rounds 5
    .venv/bin/python bench/loop_overhead.py --sync-weights adapter   # the LoRA-adapter sync and a LoRA baseline

One run measures, each in its own child process, one after the other:

* bare generate: one `vllm.LLM` (the generator's own engine arguments, the warm start's weights)
  samples one iteration's batch: the recipe's prompts x group size, rollout.max_new_tokens,
  temperature 1. It follows the recipe's `sync.weights`: with `merged` (the main job) the
  generators hold the policy's merged weights and run no LoRA kernels, so the bare engine runs
  plain weights; with `adapter` it enables LoRA and serves an r=8 adapter loaded from a folder,
  as vLLM does it;
* bare learner: the same rows (prompt + a sampled completion) through plain transformers + PEFT
  LoRA + torch AdamW, rollout.mini_batches optimizer steps of train.batch_size rows in
  micro-batches of train.micro_batch_size, the GPPO loss, in one process with torch's threads;
* rlft synchronous (rollout.max_staleness=0) and overlapped (1): the recipe itself (2 vLLM
  generator actors, a reward actor, 2 DeepSpeed ranks, its weight sync), evaluation off.

Reported: median seconds per iteration (first iteration skipped as warm-up) and the ratio to
bare generate + bare learner (goals: synchronous <= 1.15, overlapped < 1.0); sync seconds and
bytes per iteration and their share of the iteration (goal < 1%). The machine's load average is
printed before and after: compare rows of one table only. The raw results (every timed round and
iteration, the machine) go to --json.
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


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default=RECIPE)
    p.add_argument("--iterations", type=int, default=8, help="rlft iterations per run (the first is warm-up)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of each bare path (after one warm-up)")
    p.add_argument("--sync-weights", choices=["merged", "adapter"], default=None,
                   help="sync.weights of the rlft runs and the matching bare engine (default: the recipe's)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "loop_overhead.json")
    p.add_argument("--worker", choices=["generate", "learner", "rlft"], help=argparse.SUPPRESS)
    p.add_argument("--staleness", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args()


def recipe_config(args, *extra: str):
    from rlft.config import load_config

    weights = [f"sync.weights={args.sync_weights}"] if args.sync_weights else []
    return load_config(args.recipe, ["train.eval_every=0", "eval.num_examples=0", "tracking.wandb=disabled",
                                     "tracking.plots=false", *weights, *extra])


def base_model(cfg) -> str:
    from rlft.control import train
    from rlft.control.warm_start import base_model_path

    return str(base_model_path(cfg, train=train, show_progress=False))


def prompts_of(cfg, tokenizer) -> list[list[int]]:
    """One iteration's prompts, tokenised as rlft does."""
    from rlft.data.collate import encode_prompt
    from rlft.data.tasks import build_task

    per_iteration = cfg.train.batch_size * cfg.rollout.mini_batches // cfg.algorithm.group_size
    examples = build_task(cfg.task).split("train")[:per_iteration]
    return [encode_prompt(tokenizer, ex.prompt, False) for ex in examples]


# ----------------------------------------------------------------- bare generate
def bare_generate(args) -> dict:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from rlft.roles.generator import engine_kwargs, vllm_lora_rank

    cfg = recipe_config(args)
    path = base_model(cfg)
    tokenizer = AutoTokenizer.from_pretrained(path)
    adapter = cfg.sync.weights == "adapter"  # merged: the generators run plain (merged) weights, no LoRA
    kwargs = engine_kwargs(cfg.generator, path, "float32", vllm_lora_rank(cfg.peft.r) if adapter else None,
                           cfg.generator.max_model_len, 0)
    kwargs.pop("worker_extension_cls")
    llm = LLM(**kwargs)
    prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts_of(cfg, tokenizer)]
    ro = cfg.rollout
    params = [SamplingParams(n=cfg.algorithm.group_size, max_tokens=ro.max_new_tokens, temperature=ro.temperature,
                             seed=1234 + i, logprobs=0) for i in range(len(prompts))]
    request = adapter_request(cfg, path) if adapter else None
    seconds, rows = [], []
    for round_ in range(args.rounds + 1):
        t0 = time.perf_counter()
        outputs = llm.generate(prompts, params, lora_request=request, use_tqdm=False)
        if round_:
            seconds.append(time.perf_counter() - t0)
    for prompt, out in zip(prompts, outputs):
        rows += [(prompt.get("prompt_token_ids"), list(c.token_ids)) for c in out.outputs]
    (Path(args.out).parent / "rows.json").write_text(json.dumps(rows))  # the bare learner trains on these
    return {"seconds": statistics.median(seconds), "all": seconds, "completions": len(rows),
            "weights": cfg.sync.weights}


def adapter_request(cfg, path: str):
    """A random (non-zero) LoRA of the recipe's rank written as a PEFT folder, as vLLM loads adapters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from vllm.lora.request import LoRARequest

    adapter = Path(tempfile.mkdtemp(prefix="rlft_bench_lora_"))
    lora = LoraConfig(r=cfg.peft.r, lora_alpha=cfg.peft.alpha, target_modules=list(cfg.peft.target_modules),
                      init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(path), lora).save_pretrained(adapter)
    return LoRARequest("bench", 1, str(adapter))


# ----------------------------------------------------------------- bare learner
def bare_learner(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs
    from rlft.ops.surrogates import ppo_token_loss

    cfg = recipe_config(args)
    torch.manual_seed(0)
    rows = json.loads((Path(args.out).parent / "rows.json").read_text())
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model(cfg)),
                           LoraConfig(r=cfg.peft.r, lora_alpha=cfg.peft.alpha, target_modules=list(cfg.peft.target_modules)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p): len(p) + len(c)] = torch.tensor(c)
    mask = (labels != IGNORE_INDEX) | (torch.arange(width) < torch.tensor([len(p) for p, _ in rows]).unsqueeze(1))
    advantages = torch.randn(len(rows), width - 1)
    b, mb = cfg.train.batch_size, cfg.train.micro_batch_size

    def one_iteration():
        for step in range(cfg.rollout.mini_batches):
            for start in range(step * b, (step + 1) * b, mb):
                sl = slice(start, start + mb)
                logits = model(input_ids=ids[sl], attention_mask=mask[sl].long()).logits
                logprobs, m = token_logprobs(logits, labels[sl])
                loss, _ = ppo_token_loss(logprobs, logprobs.detach(), advantages[sl] * m, 0.2, 0.28, None)
                ((loss * m).sum() / max(float(m.sum()), 1.0)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            optimizer.zero_grad()

    seconds = []
    for round_ in range(args.rounds + 1):
        t0 = time.perf_counter()
        one_iteration()
        if round_:
            seconds.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(seconds), "all": seconds, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------- rlft
def rlft_loop(args) -> dict:
    from rlft.control import train

    probe = recipe_config(args)
    steps = args.iterations * probe.rollout.mini_batches
    cfg = recipe_config(args, f"train.steps={steps}", f"rollout.max_staleness={args.staleness}",
                        f"run.name=bench_overhead_s{args.staleness}", "run.if_exists=overwrite")
    summary = train(cfg, show_progress=False)
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    per_iter = [r for r in rows if "perf/step_seconds" in r][1:]
    median = lambda key: statistics.median(r[key] for r in per_iter)  # noqa: E731
    return {"seconds": median("perf/step_seconds"), "all": [r["perf/step_seconds"] for r in per_iter],
            "sync_seconds": median("sync/seconds"), "sync_bytes": median("sync/bytes"),
            "parity_seconds": median("sync/parity_seconds") if "sync/parity_seconds" in per_iter[0] else None,
            "generate_seconds": median("perf/time_generate"), "train_seconds": median("perf/time_train"),
            "staleness": max(r["rollout/staleness"] for r in per_iter), "weights": cfg.sync.weights}


# ----------------------------------------------------------------- driver
def child(args, worker: str, out: Path, staleness: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--worker", worker, "--out", str(out), "--recipe", args.recipe,
           "--iterations", str(args.iterations), "--rounds", str(args.rounds), "--staleness", str(staleness),
           *(["--sync-weights", args.sync_weights] if args.sync_weights else [])]
    log = out.with_suffix(".log")
    with log.open("w") as stream:
        code = subprocess.call(cmd, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT)
    result = out.with_suffix(".json")
    if code or not result.exists():
        return {"error": f"exit {code}, see {log}"}
    return json.loads(result.read_text())


def print_report(results: dict, limit: float | None, weights: str) -> None:
    print(f"| path (sync.weights: {weights}) | s / iteration (median) | vs bare generate + bare learner |")
    print("|---|---|---|")
    for name, found in results.items():
        if "error" in found:
            print(f"| {name} | failed: {found['error']} | - |")
            continue
        ratio = f"**{found['seconds'] / limit:.2f}x**" if limit and name.startswith("rlft") else "-"
        print(f"| {name} | {found['seconds']:.2f} | {ratio} |")
    if limit:
        print(f"| bare generate + bare learner | {limit:.2f} | 1.00x |")
    for name in ("rlft synchronous", "rlft overlapped"):
        found = results[name]
        if "error" not in found:
            share = found["sync_seconds"] / found["seconds"]
            parity = found.get("parity_seconds")
            parity_text = (f"; parity probe {parity * 1000:.0f} ms = {100 * parity / found['seconds']:.2f}%"
                           if parity is not None else "")
            print(f"\n{name}: sync {found['sync_seconds'] * 1000:.0f} ms and {found['sync_bytes'] / 1024:.0f} KiB per "
                  f"iteration = {100 * share:.2f}% of the iteration{parity_text}; generate {found['generate_seconds']:.2f} s, "
                  f"train {found['train_seconds']:.2f} s; max staleness {found['staleness']:.0f}")


def main() -> int:
    args = parse_args()
    if args.worker:
        run = {"generate": bare_generate, "learner": bare_learner, "rlft": rlft_loop}[args.worker]
        Path(args.out).with_suffix(".json").write_text(json.dumps(run(args)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="rlft_bench_overhead_"))
    load_before = os.getloadavg()
    print(f"load average before: {load_before}", flush=True)
    results = {}
    for name, worker, staleness in (("bare generate", "generate", 0), ("bare learner", "learner", 0),
                                    ("rlft synchronous", "rlft", 0), ("rlft overlapped", "rlft", 1)):
        print(f"running {name} ...", flush=True)
        results[name] = child(args, worker, work / f"{name.replace(' ', '_')}.{worker}", staleness)
    print(f"load average after: {os.getloadavg()}\n")
    bare = [results["bare generate"].get("seconds"), results["bare learner"].get("seconds")]
    limit = sum(bare) if None not in bare else None
    weights = args.sync_weights or recipe_config(args).sync.weights
    print_report(results, limit, weights)
    write_results(args.json, {"recipe": args.recipe, "sync_weights": weights, "iterations": args.iterations,
                              "rounds": args.rounds, "load_average_before": load_before, "bare_sum_seconds": limit,
                              "vs_bare_sum": {n: r["seconds"] / limit for n, r in results.items()
                                              if limit and n.startswith("rlft") and "error" not in r},
                              "results": results})
    print(f"\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
