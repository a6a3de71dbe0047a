"""Payload kinds: what the learner publishes after an update, and how a generator applies it.

Every payload has a version, a kind and a fingerprint (sha256 over tensor names, dtypes, shapes
and bytes) that the learner computes before sending and the generator computes from what it
actually deserialised. Kinds:

* `lora`: LoRA A/B tensors in PEFT naming (`base_model.model.<module>.lora_A.weight`) plus the
  adapter config; the generator registers them with vLLM as a new adapter per version, from
  memory (rlft.sync.vllm_worker). PiSSA ships as a rank-2r LoRA on the original base.
* `dense`: every weight of the model in Hugging Face checkpoint naming (adapters merged in:
  W + scale B A), reloaded in place into the engine (`sync.weights: merged`, and full
  fine-tuning); the engine then generates at base-model speed, with no LoRA kernels.

Sparse deltas (sparse PEFT) are a further kind with the same three operations: `build` on the learner, `apply(engine, previous)` on the generator, and
`request()` for what a generate call must name (a LoRA request, or nothing).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from rlft.registry import Registry

EXTENSION = "rlft.sync.vllm_worker.WeightSyncExtension"


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in name order (short hex)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def serialize(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def encode(tensors: dict[str, torch.Tensor]) -> dict:
    """The `tensors` and `fingerprint` fields of a payload, from one CPU copy of the tensors."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return {"tensors": serialize(tensors), "fingerprint": fingerprint(tensors)}


def load_tensors(payload_bytes: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(payload_bytes)


def adapter_config_dict(peft_config, rank: int, alpha: float) -> dict:
    """JSON-safe PEFT adapter config with the shipped rank and alpha (loads as a plain LoRA)."""
    config = json.loads(json.dumps(peft_config.to_dict(), default=list))
    config.update(r=rank, lora_alpha=alpha, init_lora_weights=True)
    return config


@dataclass(frozen=True)
class Payload:
    """Base of every payload kind."""

    kind: ClassVar[str] = "base"
    version: int
    tensors: bytes        # safetensors serialisation (bytes survive every transport)
    fingerprint: str

    @property
    def num_bytes(self) -> int:
        return len(self.tensors)

    def apply(self, engine, previous: "Payload | None") -> str:
        """Load into a vLLM engine (replacing `previous`); return the fingerprint the workers saw."""
        raise NotImplementedError

    def request(self):
        """What a generate call names to use these weights (None: the engine's own weights)."""
        return None


@dataclass(frozen=True)
class LoraPayload(Payload):
    kind: ClassVar[str] = "lora"
    config: dict = None   # PEFT adapter_config.json content

    @classmethod
    def build(cls, version: int, tensors: dict[str, torch.Tensor], config: dict) -> "LoraPayload":
        return cls(version=version, config=config, **encode(tensors))

    def apply(self, engine, previous):
        replaces = previous.version if isinstance(previous, LoraPayload) else None
        seen = engine.collective_rpc("rlft_add_lora", args=(self.version, self.tensors, self.config, replaces))
        if len(set(seen)) != 1:
            raise RuntimeError(f"engine workers loaded different adapters: {seen}")
        return seen[0]

    def request(self):
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"policy-v{self.version}", self.version, "in-memory")

    def write_folder(self, folder) -> Path:
        """A PEFT adapter folder (PeftModel.from_pretrained, vLLM LoRARequest)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_model.safetensors").write_bytes(self.tensors)
        (folder / "adapter_config.json").write_text(json.dumps(self.config, indent=2))
        return folder


@dataclass(frozen=True)
class DensePayload(Payload):
    kind: ClassVar[str] = "dense"

    @classmethod
    def build(cls, version: int, tensors: dict[str, torch.Tensor]) -> "DensePayload":
        return cls(version=version, **encode(tensors))

    def apply(self, engine, previous):
        seen = engine.collective_rpc("rlft_load_dense", args=(self.tensors,))
        # cached KV blocks were computed with the old weights
        engine.reset_prefix_cache()
        if len(set(seen)) != 1:
            raise RuntimeError(f"engine workers loaded different weights: {seen}")
        return seen[0]


PAYLOAD_KINDS: Registry = Registry("payload kind", {"lora": LoraPayload, "dense": DensePayload})
