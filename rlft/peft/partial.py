"""What the partial-weight methods share: PaCA and LIFT train a few entries of each target linear.

A `PartialLinear` replaces a target `nn.Linear`: it keeps the frozen base as `weight` (so the
checkpoint name of the whole matrix is unchanged), a small trainable tensor, and forms the
effective weight by writing the trained entries into a copy of the base (one GEMM per forward).
Inside `reference_mode` every partial linear computes with the original weights instead.
`PartialLinearMethod` is the PEFT method around such layers: a method only says how to build one.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from rlft.peft.base import PeftMethod


class PartialLinear(nn.Module):
    """A linear layer whose weight is the frozen base with some entries trained."""

    trainable_name = ""  # the attribute holding the trained entries

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.use_reference = False

    def effective_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def reference_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.reference_weight() if self.use_reference else self.effective_weight()
        return nn.functional.linear(x, weight, self.bias)


def replace_linears(model: nn.Module, targets, make) -> None:
    """Swap every nn.Linear whose name ends in one of `targets` for `make(linear)`."""
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    if not found:
        raise ValueError(f"peft.target_modules={list(targets)} matches no linear layer of the model")
    for name, linear in found:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, make(linear))


def partial_linears(model: nn.Module) -> dict[str, PartialLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PartialLinear)}


@contextmanager
def reference_mode(model: nn.Module):
    layers = list(partial_linears(model).values())
    for layer in layers:
        layer.use_reference = True
    try:
        yield
    finally:
        for layer in layers:
            layer.use_reference = False


def effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight in checkpoint naming, the partial linears' trained entries written in."""
    wrappers = partial_linears(model)
    trained = {f"{name}.{w.trainable_name}" for name, w in wrappers.items()}
    state = {name: p.detach() for name, p in model.named_parameters() if name not in trained}
    for name, wrapper in wrappers.items():
        state[f"{name}.weight"] = wrapper.effective_weight().detach()
    return state


class PartialLinearMethod(PeftMethod):
    """A PEFT method that replaces the target linears by PartialLinear layers."""

    has_reference = True

    def make_layer(self, linear: nn.Linear, generator: torch.Generator) -> PartialLinear:
        """The layer that replaces `linear` (`generator`: seeded alike on every rank)."""
        raise NotImplementedError

    def wrap(self, model, seed, with_reference, load_copy=None):
        model.requires_grad_(False)
        generator = torch.Generator().manual_seed(seed)
        replace_linears(model, set(self.cfg.target_modules), lambda linear: self.make_layer(linear, generator))
        return model

    def reference(self, model):
        return reference_mode(model)

    def effective_weights(self, model):
        return effective_state(model)


def save_full_folder(model: nn.Module, tokenizer, out_dir: Path, state: dict[str, torch.Tensor]) -> Path:
    """An HF model folder holding `state` (the effective weights), loadable without rlft."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), state_dict={k: v.contiguous() for k, v in state.items()},
                          safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


@contextmanager
def swapped_values(params: dict[str, nn.Parameter], values: dict[str, torch.Tensor]):
    """Temporarily give each parameter other data (no autograd record; the tensors stay the same
    objects, so anything that saved them sees their own values again afterwards)."""
    kept = {}
    try:
        for name, param in params.items():
            kept[name] = param.data
            param.data = values[name].to(device=param.device, dtype=param.dtype)
        yield
    finally:
        for name, data in kept.items():
            params[name].data = data
