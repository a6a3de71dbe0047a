"""LoRA: W' = W + (alpha/r) B A with B = 0 at init (docs/algorithms.md#lora).

The reference policy is the same model with the adapter disabled (no second copy). Generators
get the A/B tensors in PEFT naming; checkpoints are the same tensors as a PEFT adapter folder,
loadable by `PeftModel.from_pretrained(base, folder)` and by vLLM.

A "score" model (a reward model, AlgorithmSpec.model_head) gets PEFT's SEQ_CLS task type: the
new scalar head is a module PEFT trains whole (`modules_to_save`) beside the adapters. Its
checkpoint is the merged model, an HF folder `AutoModelForSequenceClassification.from_pretrained`
loads, with the adapter folder (adapters and head) in `adapter/` beneath it. A "value" model (a
critic's per-token head) is the same with PEFT's TOKEN_CLS task type (AutoModelForTokenClassification).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from rlft.peft.base import AdapterConfig, PeftMethod, adapter_parameters, is_sequence_scorer, is_token_scorer
from rlft.sync.payload import LoraPayload, adapter_config_dict


class LoRAConfig(AdapterConfig):
    method: Literal["lora"] = Field("lora", description="PEFT method (rlft.peft.PEFT_METHODS).")


def adapter_tensors(model, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Adapter weights in PEFT checkpoint naming (what vLLM and PeftModel load), detached copies."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def merged_weights(model, adapter_name: str = "default", only: set[int] | None = None) -> dict[str, torch.Tensor]:
    """The base model's weights with the adapter merged in (W + scale B A), in checkpoint naming
    (`...q_proj.base_layer.weight` -> `...q_proj.weight`); adapter tensors themselves are left out.
    only: the weights of the base parameters with these ids (a gathered group at ZeRO-3)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {f"{name}.base_layer.weight": module.get_delta_weight(adapter_name)
              for name, module in base.named_modules()
              if isinstance(module, LoraLayer) and adapter_name in module.lora_A
              and (only is None or id(module.base_layer.weight) in only)}
    out = {}
    for name, param in base.named_parameters():
        if ".lora_" in name or (only is not None and id(param) not in only):
            continue
        weight = param.detach()
        if name in deltas:
            weight = weight + deltas[name].to(weight.dtype)
        out[name.replace(".base_layer.", ".")] = weight
    return out


class LoRA(PeftMethod):
    name = "lora"
    config_cls = LoRAConfig
    payload_kind = "lora"
    has_reference = True
    heads = ("lm", "score", "value")
    zero3 = True

    @classmethod
    def trained_parameters(cls, cfg, shape):
        return adapter_parameters(cfg, shape, lambda inp, out: inp + out)  # A (r x in) and B (out x r)

    def lora_config(self, init_lora_weights: bool | str = True, task_type: str = "CAUSAL_LM"):
        from peft import LoraConfig

        cfg = self.cfg
        return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), init_lora_weights=init_lora_weights,
                          task_type=task_type)

    def wrap(self, model, seed, with_reference, load_copy=None):
        from peft import get_peft_model

        torch.manual_seed(seed)  # identical adapters on every rank
        # SEQ_CLS: PEFT also trains the classifier head whole (modules_to_save: "score", "classifier")
        task_type = "SEQ_CLS" if is_sequence_scorer(model) else "TOKEN_CLS" if is_token_scorer(model) else "CAUSAL_LM"
        return get_peft_model(model, self.lora_config(task_type=task_type))

    @contextmanager
    def reference(self, model):
        with model.disable_adapter():
            yield

    # What generators and checkpoints receive: (tensors, rank, alpha) of a LoRA on the original base.
    def shipped_lora(self, model) -> tuple[dict[str, torch.Tensor], int, float]:
        return adapter_tensors(model), self.cfg.r, self.cfg.alpha

    def generator_lora_rank(self) -> int:
        return self.cfg.r

    def effective_weights(self, model, only=None):
        return merged_weights(model, only=only)

    def export_unit(self, name):
        """A LoRA layer's base weight is merged with its A and B: the three are gathered together."""
        for marker in (".base_layer.", ".lora_"):
            if marker in name:
                return name.split(marker)[0]
        return super().export_unit(name)

    def export(self, model, version):
        tensors, rank, alpha = self.shipped_lora(model)
        return LoraPayload.build(version, tensors, adapter_config_dict(model.peft_config["default"], rank, alpha))

    def save(self, model, tokenizer, out_dir, state_dict=None):
        """state_dict: a scorer's merged weights when the model does not hold them whole (ZeRO-3)."""
        if self.saves_whole_weights(model):
            return save_merged_scorer(model, tokenizer, Path(out_dir),
                                      self.saved_weights(model) if state_dict is None else state_dict)
        return save_adapter_folder(self.export(model, version=0), tokenizer, out_dir)

    def saves_whole_weights(self, model):
        """A score or value model is saved merged, with the head PEFT trained whole under its own name."""
        return is_sequence_scorer(model.get_base_model()) or is_token_scorer(model.get_base_model())

    def saved_weights(self, model, only=None):
        return with_trained_heads(merged_weights(model, only=only))


def with_trained_heads(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of a model whose head PEFT trains whole beside the adapters (modules_to_save): the trained
    copy under the head's own name, the untouched original left out."""
    return {name.replace(".modules_to_save.default.", "."): t for name, t in weights.items()
            if ".original_module." not in name}


def save_merged_scorer(model, tokenizer, out_dir: Path, merged: dict[str, torch.Tensor]) -> Path:
    """A LoRA score or value model as the merged HF folder `out_dir` (AutoModelForSequenceClassification
    or AutoModelForTokenClassification loads it; `merged`: its weights, LoRA.saved_weights) with its
    PEFT adapter folder (adapters and the trained head) in `out_dir/adapter`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir / "adapter"), safe_serialization=True)
    model.get_base_model().save_pretrained(str(out_dir), state_dict=merged, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


def save_adapter_folder(payload: LoraPayload, tokenizer, out_dir) -> Path:
    """A PEFT adapter folder (PeftModel.from_pretrained, vLLM) with the tokenizer beside it."""
    out_dir = payload.write_folder(Path(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir
