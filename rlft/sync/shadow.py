"""The checkpoint tensors a generator worker keeps to apply partial and sparse payloads.

vLLM keeps no plain copy of a weight it has prepared for its kernels (on CPU the linear weights
are repacked for oneDNN and the originals dropped; q/k/v and gate/up are fused into one layer),
so a payload that changes a few entries, or one of three fused matrices, cannot be written into
the engine directly. The worker keeps the checkpoint tensors it has been sent updates for
(read from the model folder the first time), applies each update to them, and reloads every
layer it touched, whole: each touched weight together with the other checkpoint tensors that
fill the same vLLM layer.
"""

from __future__ import annotations

from pathlib import Path

import torch


class CheckpointShadow:
    def __init__(self, model_dir: str | Path, dtype: torch.dtype, packed_modules: dict[str, list[str]] | None = None):
        from safetensors import safe_open

        self.files = {}
        for file in sorted(Path(model_dir).glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as handle:
                self.files.update({name: file for name in handle.keys()})
        if not self.files:
            raise FileNotFoundError(f"no safetensors weights in {model_dir}: partial and sparse sync read the base from there")
        self.dtype = dtype
        # leaf module -> the leaves fused with it into one vLLM layer (q_proj -> q_proj, k_proj, v_proj)
        self.fused = {leaf: list(group) for group in (packed_modules or {}).values() for leaf in group}
        self.tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            if name not in self.files:
                raise KeyError(f"weight {name!r} is not in the model checkpoint")
            from safetensors import safe_open

            with safe_open(str(self.files[name]), framework="pt") as handle:
                self.tensors[name] = handle.get_tensor(name).to(self.dtype)
        return self.tensors[name]

    def replace(self, tensors: dict[str, torch.Tensor]) -> list[str]:
        for name, value in tensors.items():
            current = self.get(name)
            if value.shape != current.shape:
                raise ValueError(f"weight {name}: payload shape {tuple(value.shape)} != checkpoint {tuple(current.shape)}")
            self.tensors[name] = value.to(self.dtype).clone()
        return list(tensors)

    def scatter(self, updates: dict) -> list[str]:
        """Apply rlft.sync.payload.SparseUpdate's: weight name -> (index, values, shape)."""
        for name, update in updates.items():
            weight = self.get(name)
            if tuple(update.shape) != tuple(weight.shape):
                raise ValueError(f"weight {name}: payload shape {tuple(update.shape)} != checkpoint {tuple(weight.shape)}")
            flat = weight.view(-1)
            if update.index.numel() and int(update.index.max()) >= flat.numel():
                raise ValueError(f"weight {name}: sparse position {int(update.index.max())} outside its {flat.numel()} entries")
            flat[update.index] = update.values.to(self.dtype)
        return list(updates)

    def layer_tensors(self, touched: list[str]) -> dict[str, torch.Tensor]:
        """Every checkpoint tensor of the vLLM layers that hold the touched weights."""
        modules = set()
        for name in touched:
            module, _, _ = name.rpartition(".")
            parent, _, leaf = module.rpartition(".")
            for sibling in self.fused.get(leaf, [leaf]):
                modules.add(f"{parent}.{sibling}" if parent else sibling)
        return {name: self.get(name) for name in self.files if name.rpartition(".")[0] in modules}
