"""What a PEFT method provides to the learner (docs/design.md#adding-a-peft-method).

A method wraps the freshly loaded model, says what the reference policy is (`reference`: a
context inside which a forward pass is the reference model), exports the payload that
generators apply after each update (rlft.sync), and writes checkpoints. The learner calls only
these methods, so nothing else in the code branches on the method.

Each method owns its config section: `config_cls`, a `PeftConfig` subclass whose `method` field
names it (the `peft` section of a recipe is validated by the class `peft.method` picks; methods
that train a small delta on target linears share `AdapterConfig`'s fields). Its checks of the
whole run config are `validate`, its trained-parameter count for the memory estimate
`trained_parameters`; `payload_kind`, `has_reference` and `produces_full_model` say what the
rest of the code may expect of it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable

import torch
from pydantic import Field

from rlft.schema import Section


class PeftConfig(Section):
    """The `peft` section; a method's config class extends it with the method's own fields."""

    method: str = Field(
        description="What is trained: a name in rlft.peft.PEFT_METHODS (a recipe that names none gets "
        "rlft.peft.DEFAULT_METHOD)."
    )


class AdapterConfig(PeftConfig):
    """Fields of the methods that train a small delta on target linear layers (lora, pissa, paca, lift)."""

    r: int = Field(8, ge=1, description="Adapter rank (LoRA, PiSSA); columns per layer (PaCA); LoRA-equivalent "
                                       "budget (LIFT trains (in+out) x r entries per layer).")
    alpha: float = Field(16.0, gt=0, description="LoRA and PaCA alpha (scaling alpha/r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Linear layers that get adapters.",
    )


def adapter_parameters(cfg: AdapterConfig, shape, per_linear: Callable[[int, int], int]) -> int:
    """Trained values of an adapter method: r x per_linear(in, out) over the target linears of every
    layer (`shape`: an rlft.footprint.ModelShape); ~1% of the model when the shape is unknown."""
    sizes = shape.adapter_linear_sizes(cfg.target_modules)
    if sizes is None:
        return shape.params // 100  # an unknown architecture: adapters are ~1% of it
    return cfg.r * sum(per_linear(inp, out) for inp, out in sizes) * shape.layers


class PeftMethod:
    name = "base"
    # Its `peft` config section (a PeftConfig subclass with `method: Literal["<name>"]`).
    config_cls: type[PeftConfig] = PeftConfig
    # The rlft.sync payload kind this method exports for generators (None: it cannot sync).
    payload_kind: str | None = None
    # Whether `reference` gives a reference policy (KL terms need one).
    has_reference = False
    # Whether every weight trains, so that the final checkpoint is the whole fine-tuned model, which a
    # warm start (warm_start.recipe) hands to the next run as its base model. (LIFT and HFT save whole
    # model folders too, but as partial fine-tunes they are not offered as warm starts.)
    produces_full_model = False
    # The model heads (AlgorithmSpec.model_head) it can train: "lm" always; "score" (a reward model's
    # scalar head, trained along with the method's own weights) and "value" (a critic's per-token scalar
    # head) where `wrap` and `save` handle them.
    heads: tuple[str, ...] = ("lm",)
    # Whether it trains at learner.zero_stage=3, where each rank holds a slice of every parameter: its
    # `effective_weights` and `export` then run on gathered groups of parameters (rlft.roles.zero3).
    zero3 = False

    def __init__(self, cfg):
        self.cfg = cfg

    @classmethod
    def validate(cls, run_cfg) -> None:
        """The method's own checks of the whole run config (ValueError naming the keys and a fix), made
        before any role starts (rlft.control.validation)."""

    @classmethod
    def trained_parameters(cls, cfg, shape) -> int:
        """Parameters the learner trains (with gradients and Adam moments) under the `peft` section `cfg`,
        for the memory estimate (`shape`: an rlft.footprint.ModelShape). Default: every weight."""
        return shape.params

    def wrap(self, model: torch.nn.Module, seed: int, with_reference: bool,
             load_copy: Callable[[], torch.nn.Module] | None = None) -> torch.nn.Module:
        """The model to train. with_reference: keep what `reference` needs (e.g. initial weights).
        load_copy: loads the model again, for a method that keeps a copy where copying is not possible
        (a model loaded partitioned at ZeRO-3)."""
        raise NotImplementedError

    def outside_modules(self) -> list[torch.nn.Module]:
        """Modules the method keeps beside the trained model (full: its reference copy); at ZeRO-3 the
        learner partitions them across ranks as it does the trained model."""
        return []

    def reference(self, model: torch.nn.Module) -> AbstractContextManager:
        """Context in which model(...) computes the reference policy (call under no_grad)."""
        raise NotImplementedError(f"peft method {self.name!r} has no reference policy")

    def export(self, model: torch.nn.Module, version: int):
        """The versioned payload that generators apply (an rlft.sync payload)."""
        raise NotImplementedError(f"peft method {self.name!r} cannot ship its weights to generators")

    def after_step(self, model: torch.nn.Module, optimizer) -> dict[str, float]:
        """Called after every optimizer step (LIFT re-selects its entries here); metrics to log."""
        return {}

    def generator_lora_rank(self) -> int | None:
        """LoRA rank generators must accept to apply the payloads (None: not a LoRA payload)."""
        return None

    def effective_weights(self, model: torch.nn.Module, only: set[int] | None = None) -> dict[str, torch.Tensor]:
        """Every weight of the policy as the base model would hold it (checkpoint naming); `only`: those
        computed from the parameters with these ids (a gathered group at ZeRO-3, rlft.roles.zero3)."""
        return {name: p.detach() for name, p in model.named_parameters() if only is None or id(p) in only}

    def export_unit(self, name: str) -> str:
        """The group a parameter is gathered with at ZeRO-3: the parameters `effective_weights` needs
        together (default: those of one module)."""
        return name.rpartition(".")[0]

    def save(self, model: torch.nn.Module, tokenizer, out_dir: Path) -> Path:
        raise NotImplementedError

    def saves_whole_weights(self, model: torch.nn.Module) -> bool:
        """Whether `save` writes every weight of the model: at ZeRO-3 they are gathered a bucket at a time
        (`saved_weights`) and passed to `save` as its state_dict (rlft.roles.zero3.save_policy)."""
        return self.produces_full_model

    def saved_weights(self, model: torch.nn.Module, only: set[int] | None = None) -> dict[str, torch.Tensor]:
        """The weights a whole-weights checkpoint holds, in checkpoint naming (`only`: as in effective_weights)."""
        return self.effective_weights(model, only=only)

    # ----------------------------------------------------------------- exact resume
    def resume_tensors(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Every tensor of `model` that training changes (what a resumed run must load back):
        the trainable parameters, unless the method also changes frozen ones or buffers."""
        return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def load_resume_tensors(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        """Write `resume_tensors` back: parameters in place (DeepSpeed's flat buffers view them),
        buffers replaced (their size may have changed since `wrap`)."""
        expected = self.resume_tensors(model)
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise KeyError(f"the checkpoint lacks {len(missing)} tensors of the {self.name} policy, e.g. {missing[0]}")
        for name, value in tensors.items():
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner)
            if attr in module._parameters:
                target = module._parameters[attr]
                if target.shape != value.shape:
                    raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)}, model {tuple(target.shape)}")
                with torch.no_grad():
                    target.copy_(value)
            elif attr in module._buffers:
                module._buffers[attr] = value.to(module._buffers[attr].device)
            else:
                raise KeyError(f"{name}: no such parameter or buffer in the {self.name} policy")

    def state(self) -> dict:
        """The method's own counters (JSON), for resume."""
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def mark_all_changed(self, model: torch.nn.Module) -> None:
        """Make the next `export` carry every change since the base model, not only those since the
        last export (a generator that restarts, or a resumed run, starts from the base)."""


def is_sequence_scorer(model: torch.nn.Module) -> bool:
    """Whether `model` is a Hugging Face sequence-classification model (a "score" head), by the
    transformers naming convention `<Arch>ForSequenceClassification`."""
    return type(model).__name__.endswith("ForSequenceClassification")


def is_token_scorer(model: torch.nn.Module) -> bool:
    """Whether `model` is a Hugging Face token-classification model (a "value" head: one scalar per token)."""
    return type(model).__name__.endswith("ForTokenClassification")


def torch_optimizer(optimizer) -> torch.optim.Optimizer | None:
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO, bf16), or None."""
    seen = optimizer
    while seen is not None and not isinstance(seen, torch.optim.Optimizer):
        seen = getattr(seen, "optimizer", None)
    return seen


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (of whole parameters: DeepSpeed ZeRO-3 leaves a partitioned one
    an empty placeholder and records its size in ds_numel)."""
    def numel(p):
        return getattr(p, "ds_numel", p.numel())

    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    return trainable, total
