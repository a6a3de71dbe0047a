"""HFT, half fine-tuning (docs/algorithms.md#hft): a random half of the matrices of every layer trains, the rest stay.

Category level within each decoder layer: 2 of the 4 attention projections; 2 of the 3 MLP
projections in a random half of the layers and 1 of 3 in the others; 1 of the layer's norms.
The embedding and LM head train too unless `hft_train_embeddings` is off. The draw depends on
the run seed and `peft.hft_round`, so each stage of a chain (SFT, then RL) draws its own half;
frozen tensors keep their current values.

Generators get the whole trained tensors after each update (rlft.sync.payload.PartialPayload).
The reference policy swaps the initial values of the trained tensors in.
"""

from __future__ import annotations

import random
from typing import Literal

import torch
from pydantic import Field

from rlft.peft.base import PeftConfig, PeftMethod
from rlft.peft.partial import save_full_folder, swapped_values
from rlft.sync.payload import PartialPayload

class HFTConfig(PeftConfig):
    method: Literal["hft"] = Field("hft", description="PEFT method (rlft.peft.PEFT_METHODS).")
    hft_round: int = Field(
        0, ge=0, description="HFT: which random half is trained; give each stage of a chain its own round."
    )
    hft_train_embeddings: bool = Field(True, description="HFT: train the input embedding and LM head too.")


ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def draw_half(num_layers: int, rng: random.Random, attention=ATTENTION, mlp=MLP,
              norms=("input_layernorm", "post_attention_layernorm")) -> list[set[str]]:
    """Per decoder layer, the names of the child modules that train."""
    wide = set(rng.sample(range(num_layers), num_layers // 2 + (num_layers % 2 and rng.random() < 0.5)))
    chosen = []
    for layer in range(num_layers):
        names = set(rng.sample(attention, len(attention) // 2))
        names |= set(rng.sample(mlp, 2 if layer in wide else 1))
        names |= set(rng.sample(norms, max(1, len(norms) // 2)))
        chosen.append(names)
    return chosen


def decoder_layers(model) -> list[torch.nn.Module]:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"HFT needs a decoder with `model.layers` ({type(model).__name__} has none)")
    return list(layers)


def hft_trainable(model, seed: int, round_index: int, train_embeddings: bool) -> list[str]:
    """Names of the parameters HFT trains in this round."""
    layers = decoder_layers(model)
    first = layers[0]
    children = {name for name, _ in first.named_modules()}
    attention = [f"self_attn.{n}" for n in ATTENTION if f"self_attn.{n}" in children]
    mlp = [f"mlp.{n}" for n in MLP if f"mlp.{n}" in children]
    norms = [name for name, module in first.named_children() if "norm" in type(module).__name__.lower()]
    if len(attention) != 4 or len(mlp) != 3:
        raise ValueError(f"HFT: expected q/k/v/o_proj and gate/up/down_proj in each decoder layer, found "
                         f"{attention + mlp}")
    rng = random.Random(seed * 1_000_003 + round_index)
    chosen = draw_half(len(layers), rng, attention, mlp, norms)
    prefix = {id(layer): name for name, layer in model.named_modules()}
    names = []
    for layer, picked in zip(layers, chosen):
        for child in sorted(picked):
            names += [f"{prefix[id(layer)]}.{child}.{p}" for p, _ in layer.get_submodule(child).named_parameters()]
    if train_embeddings:
        embed = model.get_input_embeddings()
        names += [name for name, p in model.named_parameters() if p is embed.weight]
        head = model.get_output_embeddings()
        if head is not None and head.weight is not embed.weight:
            names += [name for name, p in model.named_parameters() if p is head.weight]
    return names


class HFT(PeftMethod):
    name = "hft"
    config_cls = HFTConfig
    payload_kind = "partial"
    has_reference = True

    @classmethod
    def trained_parameters(cls, cfg, shape):
        return shape.params // 2

    def wrap(self, model, seed, with_reference, load_copy=None):
        self.trainable = hft_trainable(model, seed, self.cfg.hft_round, self.cfg.hft_train_embeddings)
        params = dict(model.named_parameters())
        model.requires_grad_(False)
        for name in self.trainable:
            params[name].requires_grad_(True)
        self.initial = {n: params[n].detach().clone() for n in self.trainable} if with_reference else None
        return model

    def reference(self, model):
        if self.initial is None:
            raise RuntimeError("no initial values were kept (wrap(..., with_reference=True))")
        params = dict(model.named_parameters())
        return swapped_values({n: params[n] for n in self.trainable}, self.initial)

    def export(self, model, version):
        params = dict(model.named_parameters())
        return PartialPayload.build(version, {n: params[n].detach() for n in self.trainable})

    def save(self, model, tokenizer, out_dir):
        return save_full_folder(model, tokenizer, out_dir, self.effective_weights(model))
