"""GeneratorActor: a vLLM engine that samples rollouts under a named policy version.

Weights arrive as versioned payloads (rlft.sync.payload): the payload applies itself to the
engine and reports the fingerprint of what the workers loaded. Version 0 is the base model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from rlft import run_modes
from rlft.logs import library_env
from rlft.roles.engine_steps import SteppedEngine
from rlft.sync.payload import EXTENSION

log = logging.getLogger(__name__)


# vLLM's CPU default per-step token budget (LLM class), kept when chunked prefill is off.
CPU_TOKEN_BUDGET = 4096


def engine_in_actor(setting: str, mode: str, cpu: bool, tensor_parallel_size: int = 1) -> bool:
    """Whether vLLM's engine core and worker run inside the generator's own process (generator.engine_processes);
    an engine of several tensor-parallel workers runs them in processes of their own."""
    if setting != "auto":
        return setting == "in_actor"
    return cpu and not run_modes.one_process(mode) and tensor_parallel_size == 1


def engine_kwargs(gen_cfg, model_path: str, dtype: str, lora_rank: int | None, max_model_len: int | None,
                  seed: int, cpu: bool | None = None, in_actor: bool = False) -> dict:
    """vLLM engine arguments; `cpu` (None: detected from vLLM's platform) turns chunked prefill off;
    `in_actor` runs the worker in the engine's process (the engine core's place is set by
    VLLM_ENABLE_V1_MULTIPROCESSING, which `GeneratorActor.setup` sets with it)."""
    if cpu is None:
        from vllm.platforms import current_platform

        cpu = current_platform.is_cpu()
    kwargs: dict[str, Any] = dict(
        model=model_path, dtype=dtype, enforce_eager=gen_cfg.enforce_eager, seed=seed,
        max_model_len=max_model_len, worker_extension_cls=EXTENSION, tensor_parallel_size=gen_cfg.tensor_parallel_size,
        # sampling log-probs of the distribution actually sampled (after temperature), which the learner scores
        logprobs_mode="processed_logprobs",
    )
    if gen_cfg.kv_cache_mb:
        kwargs["kv_cache_memory_bytes"] = gen_cfg.kv_cache_mb << 20
    else:
        kwargs["gpu_memory_utilization"] = gen_cfg.gpu_memory_utilization
    if lora_rank:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=1, max_cpu_loras=2)
    if in_actor:
        kwargs["distributed_executor_backend"] = "uni"
    elif gen_cfg.tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp"  # worker processes of the engine's own, in any run mode
    if cpu:
        # A prefill cut in two makes vLLM rewind the request's seeded sampler, which CPU torch generators
        # cannot do ("CPU Generator does not use offset": the engine dies once a step's prompts exceed
        # the token budget). Whole prefills only; the budget must hold the longest sequence.
        context = max_model_len or json.loads((Path(model_path) / "config.json").read_text()).get(
            "max_position_embeddings", CPU_TOKEN_BUDGET)
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(CPU_TOKEN_BUDGET, context))
    return kwargs


def engine_cpu_bind(index: int, count: int, cores: int, tensor_parallel_size: int = 1) -> str:
    """Cores for CPU engine `index` of `count` (VLLM_CPU_OMP_THREADS_BIND syntax): an even share of the
    machine's cores each when there are at least as many cores as engines (one engine: all of them),
    else one core each, round robin. An engine of several tensor-parallel workers splits its share
    among them, one '|'-separated list per worker (a worker with no core of its own shares one)."""
    share = cores // count
    if share <= 1:
        own = [index % cores]
    else:
        own = list(range(index * share, (index + 1) * share))
    if tensor_parallel_size == 1:
        return core_list(own)
    per_worker = max(1, len(own) // tensor_parallel_size)
    return "|".join(core_list(own[(w * per_worker) % len(own):][:per_worker]) for w in range(tensor_parallel_size))


def core_list(cores: list[int]) -> str:
    """'a-b' for a run of consecutive cores, 'a' for one."""
    return str(cores[0]) if len(cores) == 1 else f"{cores[0]}-{cores[-1]}"


# vLLM accepts only these max_lora_rank values (vllm 0.32; docs/algorithms.md#peft-methods).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(rank: int | None) -> int | None:
    """Smallest max_lora_rank vLLM accepts that holds adapters of this rank."""
    if not rank:
        return None
    return next(r for r in VLLM_LORA_RANKS if r >= rank)


class GeneratorActor:
    """Owns one vLLM engine. Construct cheaply; `setup` starts the engine.

    With rollout.in_flight_updates the engine is driven step by step (rlft.roles.engine_steps): a weight
    load arrives beside a running `generate` (the remote modes run it in the actor's `beside` concurrency
    group) and lands between two engine steps, and each sampled token carries the version that sampled it."""

    # the engine can take new weights while it samples (rlft.control.validation asks the generator role)
    pauses_for_updates = True

    def __init__(self, cfg, index: int, model_path: str, dtype: str, lora_rank: int | None, seed: int,
                 cpu_bind: str | None = None):
        self.cfg = cfg.generator
        self.mode = cfg.runtime.mode
        self.log_level = cfg.runtime.log_level
        self.max_model_len = cfg.generator.max_model_len
        self.model_path = model_path
        self.index = index
        self.dtype = dtype
        self.lora_rank = vllm_lora_rank(lora_rank)
        self.cpu_bind = cpu_bind
        self.seed = seed
        self.weights = None   # the payload applied last (None: base weights, version 0)
        self.llm = None
        self.in_flight = cfg.rollout.in_flight_updates
        self.stepped: SteppedEngine | None = None

    @property
    def version(self) -> int:
        return self.weights.version if self.weights is not None else 0

    def setup(self) -> dict[str, Any]:
        if self.cpu_bind is not None:
            # vLLM's CPU worker pins its OpenMP threads; give each engine its own cores.
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_bind
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm.platforms import current_platform

        in_actor = engine_in_actor(self.cfg.engine_processes, self.mode, current_platform.is_cpu(),
                                   self.cfg.tensor_parallel_size)
        # vLLM reads this when the engine is built: 0 keeps its engine core in this process
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_actor else "1"
        # vLLM's log level, and whether its lines go through the root logger: when its engine runs in this
        # process and something writes the root logger's lines (a routed member, the command line; rlft.logs)
        in_process = (in_actor or run_modes.one_process(self.mode)) and bool(logging.getLogger().handlers)
        os.environ.update(library_env(self.log_level, engine_in_process=in_process))
        from vllm import LLM

        self.llm = LLM(**engine_kwargs(self.cfg, self.model_path, self.dtype, self.lora_rank, self.max_model_len,
                                       self.seed, in_actor=in_actor))
        if self.in_flight:
            self.stepped = SteppedEngine(self.llm, self.version)
        return {"index": self.index, "model": self.model_path, "lora": bool(self.lora_rank), "dtype": self.dtype,
                "engine": "in_actor" if in_actor else "separate", "in_flight_updates": self.in_flight}

    # ----------------------------------------------------------------- weights
    def load_weights(self, payload) -> str:
        """Apply payload `payload.version` (replacing the previous one; the same version again is a
        re-send after a restart or resume); return the loaded fingerprint."""
        if payload.version < self.version:
            raise ValueError(f"generator {self.index}: version {payload.version} is older than {self.version}")
        if payload.kind == "lora" and not self.lora_rank:
            raise RuntimeError(f"generator {self.index} was started without LoRA support")
        if self.stepped is not None:  # between two engine steps, requests in flight paused
            return self.stepped.between_steps(lambda: self._apply(payload), new_version=payload.version)
        return self._apply(payload)

    def _apply(self, payload) -> str:
        seen = payload.apply(self.llm, self.weights)
        self.weights = payload.emptied()  # its version and adapter name; a whole model's bytes are not kept
        return seen

    # ----------------------------------------------------------------- the weight group (sync.transport: collective)
    def engine_workers(self) -> int:
        """How many workers this engine runs (each one a rank of the weight group)."""
        return self.llm.llm_engine.vllm_config.parallel_config.world_size

    def join_weight_group(self, addr: str, port: int, first_rank: int, world_size: int, backend: str,
                          timeout_s: float) -> None:
        """Have every engine worker start joining learner rank 0's weight group (rlft.sync.transport.connect)."""
        self._between_steps(lambda: self.llm.collective_rpc(
            "rlft_join_weight_group", args=(addr, port, first_rank, world_size, backend, timeout_s)))

    def weight_group_ready(self) -> list[int]:
        """Wait until the workers are in the group; their ranks."""
        return self._between_steps(lambda: self.llm.collective_rpc("rlft_weight_group_ready"))

    def _between_steps(self, call):
        """A call into the engine while another thread may be stepping it (in-flight updates): between two
        steps (the engine's client is not safe for two threads at once)."""
        if self.stepped is None:
            return call()
        with self.stepped.lock:
            return call()

    def _request(self):
        return self.weights.request() if self.weights is not None else None

    # ----------------------------------------------------------------- sampling
    def generate(self, prompts: list[list[int]], n: int, max_new_tokens: int | list[int], temperature: float,
                 top_p: float, seed: int, stop: list[str] | None = None) -> list[list[dict[str, Any]]]:
        """n samples per tokenised prompt: token ids, sampling log-probs, text, version.
        max_new_tokens: one limit for every prompt, or one per prompt. stop: strings that end a sample
        (kept in its text and tokens: a multi-turn episode's closing tag)."""
        if not prompts:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # vLLM draws the j-th of n samples with seed + j: prompts n seeds apart share no random stream.
        limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)

        def params(i: int, count: int, first_seed: int) -> SamplingParams:  # prompt i's samples
            return SamplingParams(n=count, max_tokens=limits[i], temperature=temperature, top_p=top_p, seed=first_seed,
                                  logprobs=0, stop=stop, include_stop_str_in_output=bool(stop))

        if self.stepped is not None:
            return self._generate_stepped(prompts, n, seed, params)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], [params(i, n, seed + i * n) for i in range(len(prompts))],
            lora_request=self._request(), use_tqdm=False,
        )
        results = []
        for out in outputs:
            samples = []
            for c in out.outputs:
                ids = list(c.token_ids)
                logprobs = [c.logprobs[i][tok].logprob for i, tok in enumerate(ids)] if c.logprobs else []
                samples.append({"completion_ids": ids, "logprobs": logprobs, "text": c.text,
                                "finish_reason": c.finish_reason, "version": self.version})
            results.append(samples)
        return results

    def _generate_stepped(self, prompts, n, seed, params) -> list[list[dict[str, Any]]]:
        """`generate` on the stepped engine: sample j of prompt i is its own request with seed + i * n + j
        (the seed vLLM gives it in an n-sample request); each token keeps the version that sampled it."""
        from vllm.inputs import TokensPrompt

        requests = [(TokensPrompt(prompt_token_ids=prompts[i]), params(i, 1, seed + i * n + j))
                    for i in range(len(prompts)) for j in range(n)]
        ids = self.stepped.submit([r[0] for r in requests], [r[1] for r in requests], self._request())
        done = self.stepped.wait(ids)
        return [[{"completion_ids": c.token_ids, "logprobs": c.logprobs, "text": c.text, "finish_reason": c.finish_reason,
                  "version": min(c.versions, default=self.version), "versions": c.versions}
                 for c in done[i * n:(i + 1) * n]] for i in range(len(prompts))]

    def prompt_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """log p(token_t | tokens_<t) for t >= 1 of each sequence (the parity probe)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        prompts = [TokensPrompt(prompt_token_ids=s) for s in sequences]
        if self.stepped is not None:  # beside a running `generate`, on the same steps
            done = self.stepped.wait(self.stepped.submit(prompts, [params.clone() for _ in sequences], self._request()))
            scored = [c.prompt_logprobs for c in done]
        else:
            scored = [out.prompt_logprobs for out in self.llm.generate(prompts, params, lora_request=self._request(),
                                                                        use_tqdm=False)]
        return [[entry[tok].logprob for entry, tok in zip(per_position[1:], seq[1:])]
                for per_position, seq in zip(scored, sequences)]

    def probe_logprobs(self, probe) -> list[float]:
        """The parity probe's scored log-probs (rlft.families.causal_lm)."""
        from rlft.families.causal_lm import CausalLM

        scored = self.prompt_logprobs([probe["input_ids"][0].tolist()])[0]
        return [lp for lp, keep in zip(scored, CausalLM.scored_positions(probe).tolist()) if keep]

    def memory(self) -> dict[str, float]:
        from rlft.memory import process_memory

        return process_memory()

    def close(self) -> None:
        """Stop the engine now: its engine-core and worker processes (if separate) end here, not when the LLM
        is collected."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
