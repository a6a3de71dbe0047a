"""GeneratorActor: a vLLM engine that samples rollouts under a named policy version.

Weights arrive as versioned LoRA payloads (rlft.sync.payload); each version is registered under
its own adapter id (the version number) and the previous one is removed. Version 0 is the base
model (no adapter). The engine reports the fingerprint of what it loaded.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

EXTENSION = "rlft.sync.vllm_worker.LoraTensorsExtension"


def engine_kwargs(gen_cfg, model_path: str, dtype: str, lora_rank: int | None, max_model_len: int | None,
                  seed: int) -> dict:
    kwargs: dict[str, Any] = dict(
        model=model_path, dtype=dtype, enforce_eager=gen_cfg.enforce_eager, seed=seed,
        max_model_len=max_model_len, worker_extension_cls=EXTENSION,
    )
    if gen_cfg.kv_cache_mb:
        kwargs["kv_cache_memory_bytes"] = gen_cfg.kv_cache_mb << 20
    else:
        kwargs["gpu_memory_utilization"] = gen_cfg.gpu_memory_utilization
    if lora_rank:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=1, max_cpu_loras=2)
    return kwargs


class GeneratorActor:
    """Owns one vLLM engine. Construct cheaply; `setup` starts the engine."""

    def __init__(self, gen_cfg, model_path: str, index: int, dtype: str, lora_rank: int | None,
                 max_model_len: int | None, seed: int, cpu_bind: str | None = None):
        self.cfg = gen_cfg
        self.model_path = model_path
        self.index = index
        self.dtype = dtype
        self.lora_rank = lora_rank
        self.max_model_len = max_model_len
        self.cpu_bind = cpu_bind
        self.seed = seed
        self.version = 0
        self.fingerprint: str | None = None
        self.llm = None

    def setup(self) -> dict[str, Any]:
        if self.cpu_bind is not None:
            # vLLM's CPU worker pins its OpenMP threads; give each engine its own cores.
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_bind
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm import LLM

        self.llm = LLM(**engine_kwargs(self.cfg, self.model_path, self.dtype, self.lora_rank, self.max_model_len, self.seed))
        return {"index": self.index, "model": self.model_path, "lora": bool(self.lora_rank)}

    # ----------------------------------------------------------------- weights
    def _lora_request(self):
        if self.version == 0:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"policy-v{self.version}", self.version, "in-memory")

    def load_adapter(self, payload) -> str:
        """Register adapter `payload.version`, drop the previous one; return the loaded fingerprint."""
        if not self.lora_rank:
            raise RuntimeError("this generator was started without LoRA support")
        if payload.version <= self.version:
            raise ValueError(f"generator {self.index}: version {payload.version} is not newer than {self.version}")
        fingerprints = self.llm.collective_rpc("rlft_add_lora", args=(payload.version, payload.tensors, payload.config))
        if self.version:
            self.llm.collective_rpc("rlft_remove_lora", args=(self.version,))
        if len(set(fingerprints)) != 1:
            raise RuntimeError(f"generator {self.index}: workers loaded different adapters {fingerprints}")
        self.version, self.fingerprint = payload.version, fingerprints[0]
        return self.fingerprint

    # ----------------------------------------------------------------- sampling
    def generate(self, prompts: list[list[int]], n: int, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int) -> list[list[dict[str, Any]]]:
        """n samples per tokenised prompt: token ids, sampling log-probs, text, version."""
        if not prompts:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # One seed per prompt: a shared seed would give every prompt the same random stream.
        params = [SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 seed=seed + i, logprobs=0) for i in range(len(prompts))]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params,
            lora_request=self._lora_request(), use_tqdm=False,
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

    def prompt_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """log p(token_t | tokens_<t) for t >= 1 of each sequence (the parity probe)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=s) for s in sequences], params,
            lora_request=self._lora_request(), use_tqdm=False,
        )
        return [[entry[tok].logprob for entry, tok in zip(out.prompt_logprobs[1:], seq[1:])]
                for out, seq in zip(outputs, sequences)]

    def close(self) -> None:
        self.llm = None
