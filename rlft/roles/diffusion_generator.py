"""DiffusionGeneratorActor: samples sequences from a masked diffusion model (rlft.diffusion).

The counterpart of the vLLM GeneratorActor for the mdlm model family: it applies the learner's
versioned payloads to its own copy of the model (fingerprinting what it loaded, like every
generator), samples evaluation sequences with the latest weights, and scores sequences'
approximate log-likelihood under the base model it started from, which it keeps frozen.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from rlft.sync.payload import combine_fingerprints, fingerprint

log = logging.getLogger(__name__)


class DiffusionGeneratorActor:
    def __init__(self, cfg, index: int, model_path: str, dtype: str, lora_rank: int | None, seed: int,
                 cpu_bind: str | None = None):
        self.cfg = cfg
        self.index = index
        self.model_path = model_path
        self.dtype = getattr(torch, dtype)
        self.seed = seed
        self.weights = None  # the payload applied last (None: base weights, version 0)
        self.model = None
        self.base = None

    @property
    def version(self) -> int:
        return self.weights.version if self.weights is not None else 0

    def setup(self) -> dict[str, Any]:
        from rlft.diffusion.model import MDLM
        from rlft.roles.learner import detect_device

        self.device = detect_device(self.cfg.learner.device)
        self.model = MDLM.from_pretrained(self.model_path).to(self.device, self.dtype).eval().requires_grad_(False)
        self.base = copy.deepcopy(self.model)
        return {"index": self.index, "model": self.model_path, "device": self.device, "dtype": str(self.dtype)}

    # ----------------------------------------------------------------- weights
    def load_weights(self, payload) -> str:
        """Write a dense (or partial) payload into the model; the fingerprint of what was loaded."""
        if payload.version < self.version:
            raise ValueError(f"generator {self.index}: version {payload.version} is older than {self.version}")
        if payload.kind not in ("dense", "partial"):
            raise ValueError(f"generator {self.index}: diffusion generators load dense or partial payloads, not "
                             f"{payload.kind!r} (set sync.weights=merged)")
        state = self.model.state_dict()
        seen = []
        for tensors in payload.bucket_tensors():
            unknown = sorted(set(tensors) - set(state))
            if unknown:
                raise KeyError(f"generator {self.index}: payload version {payload.version} names tensors the model "
                               f"lacks, e.g. {unknown[0]}")
            with torch.no_grad():
                for name, value in tensors.items():
                    if state[name].shape != value.shape:
                        raise ValueError(f"generator {self.index}: {name} has shape {tuple(value.shape)} in the "
                                         f"payload, {tuple(state[name].shape)} in the model")
                    state[name].copy_(value)
            loaded = self.model.state_dict()
            seen.append(fingerprint({name: loaded[name].to(value.dtype) for name, value in tensors.items()}))
        self.weights = payload.emptied()
        return combine_fingerprints(seen)

    # ----------------------------------------------------------------- sampling and scoring
    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def sample(self, num: int, seed: int, steps: int, batch_size: int) -> dict[str, Any]:
        """`num` sequences sampled with the current weights (seeded), and the version that made them."""
        from rlft.data.dna import decode
        from rlft.diffusion.mdlm import sample
        from rlft.diffusion.schedule import LogLinearSchedule

        if num <= 0:
            return {"sequences": [], "version": self.version}
        ids = sample(self.model, num, steps, LogLinearSchedule(), self._generator(seed), batch_size=batch_size)
        return {"sequences": decode(ids.cpu()), "version": self.version}

    def log_likelihood(self, sequences: list[str], steps: int, seed: int) -> list[float]:
        """Approximate log-likelihood (nats) of each sequence under the base model (App-Log-Lik,
        docs/algorithms.md#dna-evaluation-metrics)."""
        from rlft.data.dna import encode
        from rlft.diffusion.mdlm import approx_log_likelihood
        from rlft.diffusion.schedule import LogLinearSchedule

        if not sequences:
            return []
        ids = encode(sequences).to(self.device)
        return approx_log_likelihood(self.base, ids, steps, LogLinearSchedule(), self._generator(seed)).tolist()

    def probe_logprobs(self, probe) -> list[float]:
        """The parity probe's scored log-probs under the current weights (rlft.families.mdlm)."""
        from rlft.families.mdlm import probe_logprobs

        probe = {k: v.to(self.device) for k, v in probe.items()}
        return probe_logprobs(self.model, probe).tolist()

    def memory(self) -> dict[str, float]:
        from rlft.memory import process_memory

        return process_memory()

    def close(self) -> None:
        self.model = self.base = None
