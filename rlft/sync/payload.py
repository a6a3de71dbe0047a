"""Payload kinds: what the learner publishes after an update, and how a generator applies it.

Every payload has a version, a kind and a fingerprint (XXH3-128 over tensor names, dtypes, shapes
and bytes) that the learner computes before sending and the generator computes from what it
actually deserialised. Kinds:

* `lora`: LoRA A/B tensors in PEFT naming (`base_model.model.<module>.lora_A.weight`) plus the
  adapter config; the generator registers them with vLLM as a new adapter per version, from
  memory (rlft.sync.vllm_worker). PiSSA ships as a rank-2r LoRA on the original base.
* `dense`: every weight of the model in Hugging Face checkpoint naming (adapters merged in:
  W + scale B A), reloaded in place into the engine (`sync.weights: merged`, and full
  fine-tuning); the engine then generates at base-model speed, with no LoRA kernels. The tensors
  travel in buckets of whole decoder layers (`sync.bucket_mb`): the learner frees each merged
  bucket once it is serialised, and vLLM's engine core and workers hold one bucket at a time, not
  copies of the whole model. The fingerprint of a bucketed payload is a digest of its buckets'.

* `partial`: whole tensors of some weights (HFT's trained half), in checkpoint naming.
* `sparse`: (index, value) pairs of single entries of some weights (LIFT), the indices as int16
  gaps between sorted positions where they fit (half the bytes of int32 positions).

`partial` and `sparse` are written into the engine's weights in checkpoint coordinates by
vLLM's own loader (`load_checkpoint_weight_patches`: the model's `load_weights` maps names and
positions into its fused and sharded parameters) where the engine keeps its weights as loaded
(GPU). The CPU build repacks each linear weight for oneDNN and drops the original, so there the
workers apply the update to a copy of the checkpoint tensors they keep (rlft.sync.shadow) and
reload the touched layers whole (vLLM fuses q/k/v and gate/up into one layer).

Every kind has the same three operations: `build` on the learner, `apply(engine, previous)` on
the generator, and `request()` for what a generate call must name (a LoRA request, or nothing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import xxhash

from rlft.registry import Registry

EXTENSION = "rlft.sync.vllm_worker.WeightSyncExtension"


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """XXH3-128 over names, dtypes, shapes and raw bytes, in name order (32 hex digits). The fingerprint
    catches a skipped, stale or corrupted load, not an adversary, so a non-cryptographic hash serves: it
    runs at memory speed (~14 GB/s here against sha256's 1.5), and both ends hash every synced byte."""
    digest = xxhash.xxh3_128()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # the bytes in place, not a copy
    return digest.hexdigest()[:32]


def combine_fingerprints(parts: list[str]) -> str:
    """The fingerprint of a payload sent in buckets: one bucket's own, else a digest of them in order."""
    if len(parts) == 1:
        return parts[0]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def bucket_names(tensors: dict[str, torch.Tensor], bucket_bytes: int | None) -> list[list[str]]:
    """Tensor names in buckets of about `bucket_bytes` (None: one bucket), never splitting a decoder
    layer (vLLM fuses q/k/v and gate/up, so a layer reloads whole); the tensors outside the layers
    (embedding, final norm, head) form one group."""
    groups: dict[str, list[str]] = {}
    for name in sorted(tensors):
        found = _LAYER.match(name)
        groups.setdefault(found.group(1) if found else "", []).append(name)
    buckets, current, size = [], [], 0
    for names in groups.values():
        group_size = sum(tensors[n].numel() * tensors[n].element_size() for n in names)
        if current and bucket_bytes and size + group_size > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current, size = current + names, size + group_size
    return buckets + [current] if current else buckets


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
    tensors: bytes        # safetensors serialisation (bytes survive every transport; a bytearray for dense)
    fingerprint: str

    @property
    def num_bytes(self) -> int:
        return len(self.tensors)

    def emptied(self) -> "Payload":
        """This payload without its tensors: what a generator keeps of the payload it applied last."""
        return dataclasses.replace(self, tensors=b"")

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


def _rewrite_weights(engine, method: str, *args) -> str:
    """Have every worker rewrite engine weights; the one fingerprint they all report."""
    seen = engine.collective_rpc(method, args=args)
    if len(set(seen)) != 1:
        raise RuntimeError(f"engine workers loaded different weights: {seen}")
    return seen[0]


@dataclass(frozen=True)
class DensePayload(Payload):
    kind: ClassVar[str] = "dense"
    bucket_ends: tuple[int, ...] = ()   # where each bucket's safetensors serialisation ends in `tensors`

    @classmethod
    def build(cls, version: int, tensors: dict[str, torch.Tensor], bucket_bytes: int | None = None) -> "DensePayload":
        """Consumes `tensors`: each bucket's tensors are dropped once serialised, so merged copies are freed
        as the payload grows."""
        blob, ends, fingerprints = bytearray(), [], []
        for names in bucket_names(tensors, bucket_bytes):
            part = encode({name: tensors.pop(name) for name in names})
            blob += part["tensors"]
            ends.append(len(blob))
            fingerprints.append(part["fingerprint"])
        return cls(version=version, tensors=blob, fingerprint=combine_fingerprints(fingerprints), bucket_ends=tuple(ends))

    def buckets(self):
        """Each bucket's serialised tensors (a copy of one bucket at a time)."""
        start, view = 0, memoryview(self.tensors)
        for end in self.bucket_ends or (len(self.tensors),):
            yield bytes(view[start:end])
            start = end

    def bucket_tensors(self):
        """Each bucket's tensors, deserialised one bucket at a time."""
        for bucket in self.buckets():
            yield load_tensors(bucket)

    def emptied(self) -> "DensePayload":
        return dataclasses.replace(self, tensors=b"", bucket_ends=())

    def apply(self, engine, previous):
        seen = [_rewrite_weights(engine, *self.worker_call(bucket)) for bucket in self.buckets()]
        engine.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        return combine_fingerprints(seen)

    def worker_call(self, bucket: bytes) -> tuple:
        return "rlft_load_dense", bucket


@dataclass(frozen=True)
class PartialPayload(DensePayload):
    """Built like a dense payload, from only some of the weights."""

    kind: ClassVar[str] = "partial"

    def worker_call(self, bucket: bytes) -> tuple:
        return "rlft_update_weights", bucket, self.kind


# Sparse entries of weight `name`: `name@gaps16` (int16: first position, then differences between
# sorted positions) or `name@index` (int32 positions), `name@values`, and `name@shape` (the
# weight's shape, which checkpoint-coordinate patches need).
_GAPS, _INDEX, _VALUES, _SHAPE = "@gaps16", "@index", "@values", "@shape"


@dataclass(frozen=True)
class SparseUpdate:
    index: torch.Tensor   # flat positions in the weight, sorted
    values: torch.Tensor
    shape: tuple[int, ...]


def encode_sparse(updates: dict[str, SparseUpdate]) -> dict[str, torch.Tensor]:
    """Sparse updates per weight -> tensors to serialise (positions sorted, compact)."""
    out = {}
    for name, update in updates.items():
        order = update.index.argsort()
        index, values = update.index[order].long(), update.values[order]
        gaps = torch.cat([index[:1], index[1:] - index[:-1]])
        if gaps.numel() and int(gaps.max()) < 2**15:
            out[name + _GAPS] = gaps.to(torch.int16)
        else:
            out[name + _INDEX] = index.to(torch.int32)
        out[name + _VALUES] = values
        out[name + _SHAPE] = torch.tensor(update.shape, dtype=torch.int64)
    return out


def decode_sparse(tensors: dict[str, torch.Tensor]) -> dict[str, SparseUpdate]:
    updates = {}
    for key, values in tensors.items():
        if not key.endswith(_VALUES):
            continue
        name = key[: -len(_VALUES)]
        if name + _GAPS in tensors:
            index = tensors[name + _GAPS].long().cumsum(0)
        else:
            index = tensors[name + _INDEX].long()
        updates[name] = SparseUpdate(index, values, tuple(tensors[name + _SHAPE].tolist()))
    return updates


@dataclass(frozen=True)
class SparsePayload(Payload):
    kind: ClassVar[str] = "sparse"

    @classmethod
    def build(cls, version: int, updates: dict[str, SparseUpdate]) -> "SparsePayload":
        return cls(version=version, **encode(encode_sparse(updates)))

    def apply(self, engine, previous):
        seen = _rewrite_weights(engine, "rlft_update_weights", self.tensors, self.kind)
        engine.reset_prefix_cache()
        return seen


PAYLOAD_KINDS: Registry = Registry("payload kind", {
    "lora": LoraPayload, "dense": DensePayload, "partial": PartialPayload, "sparse": SparsePayload,
})
