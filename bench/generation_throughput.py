"""Generation throughput: bare vLLM engine vs rlft's GeneratorActor (Ray), without and with LoRA.

    .venv/bin/python bench/generation_throughput.py                 # 256 prompts x n=2, 32 tokens, 5 reps
    .venv/bin/python bench/generation_throughput.py --prompts 128 --n 4 --reps 5 --rounds 2

Same tokenised arith prompts, same engine arguments (`rlft.roles.generator.engine_kwargs` with
the default GeneratorConfig) and the same SamplingParams (temperature 1, top_p 1, logprobs=0,
per-prompt seeds, EOS stops generation) for:

* bare:   `vllm.LLM(...).generate` in this (driver) process, timing the generate call only;
* actor:  one `GeneratorActor` as a Ray actor, timing `RoleGroup.call("generate", ...)`: the
          engine call, rlft's conversion of outputs to dicts and the Ray transfer back;
* inline: (only with `--inline`) the same GeneratorActor as a plain object in this process, to
          split rlft's own overhead from Ray's;
* hf:     (reference, base model only; `--no-hf` skips it) transformers `generate` on the same
          prompts (left-padded batch, sampling): what TRL's GRPOTrainer uses without vLLM.

Each path runs once on a plain engine and once with LoRA enabled and an r=8 adapter in every
request (the actor gets it through `LoraPayload.build` + `load_weights`, the bare engine as a
`LoRARequest` on the same adapter written as a PEFT folder). Only one engine is alive at a time
(2 cores): the bare engine is shut down, deleted and garbage-collected before the actor starts,
and the actor is closed and killed (`ray.kill`) before the next engine starts. Each measurement
is one warm-up call, then `--reps` timed calls; the table shows median (and best) tokens/s and
completions/s, and the ratio to the bare engine by median and by best call (goal for the actor:
>= 0.9). With `--rounds 2` the second round runs the paths in reverse order (ABBA) and both
rounds are pooled. Generated token counts are printed so equal work can be checked: prompt i
is sampled with seed + i on every vLLM path (as GeneratorActor.generate does), so the vLLM paths
produce identical completions. The raw results (every timed call's seconds, tokens and
completions, the summaries, the settings, the machine) go to --json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from recipe_runs import ROOT, write_results

ADAPTER_VERSION = 1
PATHS = ("bare", "inline", "actor", "hf")  # inline: GeneratorActor without Ray; hf: transformers generate


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=256, help="arith prompts per generate call")
    p.add_argument("--n", type=int, default=2, help="samples per prompt")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=5, help="timed calls per measurement (after 1 warm-up)")
    p.add_argument("--rounds", type=int, default=1, help="repeat everything; even rounds run the paths in reverse order")
    p.add_argument("--seed", type=int, default=1234, help="prompt i is sampled with seed + i (as GeneratorActor does)")
    p.add_argument("--cpu-bind", default="0",
                   help="VLLM_CPU_OMP_THREADS_BIND for both engines, as rlft's generator 0 gets ('none': vLLM auto)")
    p.add_argument("--bare-omp-threads", type=int, default=0,
                   help="OMP_NUM_THREADS for the bare engine's processes (Ray sets 1 in a num_cpus=1 actor; 0: leave as is)")
    p.add_argument("--no-lora", action="store_true", help="skip the LoRA measurements")
    p.add_argument("--inline", action="store_true",
                   help="also time GeneratorActor.generate in this process (no Ray): splits Ray from rlft overhead")
    p.add_argument("--no-hf", dest="hf", action="store_false",
                   help="skip the reference row: HF transformers generate (batched, sampling) on the base model")
    p.add_argument("--verbose", action="store_true", help="keep vLLM's INFO logs")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "generation_throughput.json")
    return p.parse_args()


# ----------------------------------------------------------------- inputs
def make_prompts(count: int):
    """(model folder, tokenised arith train prompts) exactly as rlft encodes them."""
    from transformers import AutoTokenizer

    from rlft.data.arith import ArithConfig
    from rlft.data.collate import encode_prompt
    from rlft.data.models import ModelConfig, resolve_model
    from rlft.data.tasks import build_task

    model_path = resolve_model(ModelConfig())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples = build_task(ArithConfig(train_size=count, eval_size=10)).split("train")[:count]
    return str(model_path), [encode_prompt(tokenizer, ex.prompt, chat=False) for ex in examples]


def make_payload(model_path: str, rank: int = 8, alpha: float = 16.0):
    """An r=8 LoRA payload with non-zero B (so the adapter really changes the outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlft.peft.lora import LoRAConfig, adapter_tensors
    from rlft.sync.payload import LoraPayload, adapter_config_dict

    torch.manual_seed(0)
    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=list(LoRAConfig().target_modules))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), lora)
    tensors = adapter_tensors(model)
    tensors = {k: (torch.randn_like(v) * 0.05 if ".lora_B." in k else v) for k, v in tensors.items()}
    return LoraPayload.build(ADAPTER_VERSION, tensors, adapter_config_dict(lora, rank, alpha))


def engine_args(model_path: str, lora: bool) -> dict:
    """What rlft's GeneratorActor passes to vllm.LLM (default GeneratorConfig, generator 0)."""
    from rlft.config import GeneratorConfig
    from rlft.roles.generator import engine_kwargs

    return engine_kwargs(GeneratorConfig(), model_path, "float32", 8 if lora else None, None, seed=0)


@contextlib.contextmanager
def cpu_binding(bind: str | None, omp_threads: int = 0):
    """Set the env vars GeneratorActor.setup sets (and OMP_NUM_THREADS), restoring them afterwards."""
    keys = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "OMP_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    if bind is not None:
        os.environ[keys[0]] = bind
        os.environ.setdefault(keys[1], "0")
    if omp_threads:
        os.environ[keys[2]] = str(omp_threads)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# ----------------------------------------------------------------- runners
def timed(call, reps: int) -> list[tuple[float, int, int]]:
    """One warm-up call, then reps x (seconds, generated tokens, completions)."""
    call()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        tokens, completions = call()
        out.append((time.perf_counter() - t0, tokens, completions))
    return out


def run_bare(model_path, prompts, args, payload, adapter_dir) -> list:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    with cpu_binding(args.bind, args.bare_omp_threads):
        llm = LLM(**engine_args(model_path, payload is not None))
    request = LoRARequest(f"policy-v{ADAPTER_VERSION}", ADAPTER_VERSION, adapter_dir) if payload else None
    # One SamplingParams per prompt with seed + i, exactly as GeneratorActor.generate builds them.
    params = [SamplingParams(n=args.n, max_tokens=args.max_tokens, temperature=1.0, top_p=1.0,
                             seed=args.seed + i, logprobs=0) for i in range(len(prompts))]
    inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]

    def call():
        outs = llm.generate(inputs, params, lora_request=request, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs), sum(len(o.outputs) for o in outs)

    try:
        return timed(call, args.reps)
    finally:
        llm.llm_engine.engine_core.shutdown()  # stop the engine-core process now, not at exit
        del llm
        gc.collect()


def run_hf(model_path, prompts, args) -> list:
    """Reference: transformers `generate` on the same prompts (left-padded batch, sampling)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()

    def call():
        torch.manual_seed(args.seed)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=args.max_tokens, num_return_sequences=args.n,
                                 eos_token_id=eos, pad_token_id=pad)[:, width:]
        ended = (out == eos).long().cumsum(1)  # tokens up to and including the first EOS
        return int(((ended == 0) | ((ended == 1) & (out == eos))).sum()), out.shape[0]

    return timed(call, args.reps)


def run_actor(model_path, prompts, args, payload, mode: str = "local") -> list:
    """GeneratorActor through a RoleGroup: a Ray actor ("local") or a plain object ("inline")."""
    from rlft import runtime
    from rlft.config import config_from_dict
    from rlft.roles.generator import GeneratorActor

    cfg = config_from_dict({"task": {"name": "arith"}, "algorithm": {"name": "gppo"}})
    lora_rank = 8 if payload is not None else None
    group = runtime.RoleGroup.create(
        GeneratorActor, mode, [dict(cfg=cfg, index=0, model_path=model_path, dtype="float32", lora_rank=lora_rank,
                                    seed=0, cpu_bind=args.bind)],
        num_cpus=1.0, name="bench-generator",
    )
    try:
        with cpu_binding(None):  # inline: setup() sets the binding env vars in this process; undo after
            group.call("setup")
        if payload is not None:
            loaded = group.call("load_weights", group.share(payload))[0]
            assert loaded == payload.fingerprint, (loaded, payload.fingerprint)

        def call():
            per_prompt = group.call("generate", prompts, args.n, args.max_tokens, 1.0, 1.0, args.seed)[0]
            return sum(len(s["completion_ids"]) for g in per_prompt for s in g), sum(len(g) for g in per_prompt)

        return timed(call, args.reps)
    finally:
        inline_llm = None if group.remote else group.members[0].llm
        with contextlib.suppress(Exception):
            group.call("close")
        group.shutdown()
        if inline_llm is not None:
            inline_llm.llm_engine.engine_core.shutdown()
            del inline_llm
        gc.collect()
        time.sleep(2)  # let the killed actor's engine processes exit before the next engine starts


# ----------------------------------------------------------------- report
def summarise(samples: list) -> dict:
    tok_s = [t / s for s, t, _ in samples]
    comp_s = [c / s for s, _, c in samples]
    return {"tok_s": statistics.median(tok_s), "tok_s_best": max(tok_s), "comp_s": statistics.median(comp_s),
            "comp_s_best": max(comp_s), "seconds": statistics.median(s for s, _, _ in samples),
            "tokens": sorted({t for _, t, _ in samples}), "completions": samples[0][2], "reps": len(samples)}


def print_table(results: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    calls = args.reps * args.rounds
    table = Table(title=f"generation: {args.prompts} prompts x n={args.n}, max_tokens={args.max_tokens}, temperature 1, "
                        f"seed {args.seed}+i for prompt i; {calls} timed calls per row: median (best)")
    for col in ("setup", "path", "completions", "gen. tokens", "s / call", "tokens/s", "completions/s",
                "vs bare (median)", "vs bare (best)"):
        table.add_column(col, justify="left" if col in ("setup", "path") else "right")
    for setup in ("base", "lora"):
        bare = results.get((setup, "bare"))
        for path in PATHS if bare else ():
            r = results.get((setup, path))
            if r is None:
                continue
            table.add_row(setup, path, str(r["completions"]), "/".join(map(str, r["tokens"])), f"{r['seconds']:.2f}",
                          f"{r['tok_s']:,.0f} ({r['tok_s_best']:,.0f})", f"{r['comp_s']:.1f} ({r['comp_s_best']:.1f})",
                          f"{r['tok_s'] / bare['tok_s']:.2f}", f"{r['tok_s_best'] / bare['tok_s_best']:.2f}")
    Console(width=170).print(table)
    print("vs bare = tokens/s of the path / tokens/s of the bare engine (goal for actor: >= 0.9). On a shared, loaded\n"
          "machine the best call is the less load-sensitive estimate. 'gen. tokens' lists every distinct total seen.")


def main() -> None:
    args = parse_args()
    args.bind = None if args.cpu_bind == "none" else args.cpu_bind
    if not args.verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # before Ray starts: actors inherit it
    from rlft import runtime

    model_path, prompts = make_prompts(args.prompts)
    payload = None if args.no_lora else make_payload(model_path)
    adapter_dir = tempfile.mkdtemp(prefix="rlft_bench_lora_")
    if payload is not None:
        payload.write_folder(adapter_dir)
    runtime.start("local")  # Ray is up (and idle) during both paths, so both see the same background
    samples: dict = {}
    setups = [("base", None)] + ([] if payload is None else [("lora", payload)])
    for rnd in range(args.rounds):
        for setup, pl in setups:
            order = [p for p in PATHS if (p != "inline" or args.inline) and (p != "hf" or (args.hf and pl is None))]
            for path in order if rnd % 2 == 0 else order[::-1]:
                print(f"[round {rnd + 1}] {setup} / {path} ...", flush=True)
                t0 = time.time()
                if path == "hf":
                    got = run_hf(model_path, prompts, args)
                elif path == "bare":
                    got = run_bare(model_path, prompts, args, pl, adapter_dir)
                else:
                    got = run_actor(model_path, prompts, args, pl, "local" if path == "actor" else "inline")
                print(f"  done in {time.time() - t0:.0f} s (set-up included): "
                      + ", ".join(f"{s:.2f}s/{t}tok" for s, t, _ in got), flush=True)
                samples.setdefault((setup, path), []).extend(got)
    runtime.stop("local")
    shutil.rmtree(adapter_dir, ignore_errors=True)
    summaries = {k: summarise(v) for k, v in samples.items()}
    print_table(summaries, args)
    settings = {k: getattr(args, k) for k in ("prompts", "n", "max_tokens", "reps", "rounds", "seed", "cpu_bind",
                                              "bare_omp_threads")}
    calls = {f"{setup}/{path}": [{"seconds": s, "tokens": t, "completions": c} for s, t, c in got]
             for (setup, path), got in samples.items()}
    write_results(args.json, {**settings, "summary": {f"{setup}/{path}": r for (setup, path), r in summaries.items()},
                              "calls": calls})
    print(f"raw results: {args.json}")


if __name__ == "__main__":
    main()
