"""What the learner publishes after an update: (version, adapter tensors, fingerprint).

Tensors use PEFT naming (`base_model.model.<module>.lora_A.weight`) so vLLM loads them as an
ordinary LoRA. A PiSSA adapter only makes sense on the residual base W - s*B0*A0; it is shipped
as a rank-2r LoRA on the original base (spec 8.2): Delta W = B A - B0 A0 = [B | -B0] [A ; A0],
with alpha doubled so that the scaling alpha/r stays the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AdapterPayload:
    version: int
    tensors: bytes        # safetensors serialisation of the adapter state dict
    config: dict          # PEFT adapter_config.json content (JSON-safe)
    fingerprint: str      # rlft.sync.payload.fingerprint of the tensors

    @property
    def num_bytes(self) -> int:
        return len(self.tensors)


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in name order (short hex)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def pissa_as_lora(tensors: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank-2r LoRA on the original base equal to a PiSSA adapter on its residual base."""
    out = {}
    for name, value in tensors.items():
        if ".lora_A." in name:
            out[name] = torch.cat([value, initial[name]], dim=0)
        elif ".lora_B." in name:
            out[name] = torch.cat([value, -initial[name]], dim=1)
        else:
            out[name] = value
    return out


def adapter_config_dict(peft_config, rank: int, alpha: float) -> dict:
    """JSON-safe adapter config for vLLM, with the shipped rank and alpha."""
    config = json.loads(json.dumps(peft_config.to_dict(), default=list))
    config.update(r=rank, lora_alpha=alpha, init_lora_weights=True)
    return config


def build_payload(version: int, tensors: dict[str, torch.Tensor], config: dict) -> AdapterPayload:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return AdapterPayload(version=version, tensors=save(tensors), config=config, fingerprint=fingerprint(tensors))


def load_tensors(payload_bytes: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(payload_bytes)


def save_payload_folder(payload: AdapterPayload, folder) -> None:
    """Write a payload as a PEFT adapter folder (for engines that load adapters from disk)."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(payload.tensors)
    (folder / "adapter_config.json").write_text(json.dumps(payload.config))
