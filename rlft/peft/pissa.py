"""PiSSA (docs/algorithms.md#pissa): A, B from the top-r singular triplets of W; the frozen base holds W - s B0 A0.

"Adapter disabled" is the residual, not the original model, so the reference policy keeps the
initial adapter (B0, A0) as a second, frozen adapter named `reference` and switches to it:
residual + s B0 A0 = W. Generators and checkpoints keep the original base: the adapter is
shipped as a rank-2r LoRA, Delta W = B A - B0 A0 = [B | -B0] [A ; A0], with alpha doubled so
the scaling alpha/r is unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field

from rlft.peft.lora import LoRA, LoRAConfig, adapter_tensors

REFERENCE_ADAPTER = "reference"


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


class PiSSAConfig(LoRAConfig):
    method: Literal["pissa"] = Field(  # type: ignore[assignment]
        "pissa", description="PEFT method (rlft.peft.PEFT_METHODS)."
    )
    pissa_niter: int | None = Field(4, description="PiSSA fast-SVD iterations (None: exact SVD).")


def tuner_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


class PiSSA(LoRA):
    name = "pissa"
    config_cls = PiSSAConfig
    heads = ("lm",)  # its reference adapter and saved factors assume a causal LM
    zero3 = False  # the SVD at wrap and the shipped factors read each base weight whole

    def wrap(self, model, seed, with_reference, load_copy=None):
        from peft import get_peft_model, set_peft_model_state_dict

        niter = self.cfg.pissa_niter
        torch.manual_seed(seed)
        model = get_peft_model(model, self.lora_config("pissa" if niter is None else f"pissa_niter_{niter}"))
        self.initial = adapter_tensors(model)
        if with_reference:
            # A plain LoRA slot, then the initial PiSSA factors copied in; frozen.
            model.add_adapter(REFERENCE_ADAPTER, self.lora_config(True))
            set_peft_model_state_dict(model, self.initial, adapter_name=REFERENCE_ADAPTER)
            for name, param in model.named_parameters():
                if f".{REFERENCE_ADAPTER}." in name:
                    param.requires_grad_(False)
        return model

    @contextmanager
    def reference(self, model):
        # Switch the active adapter layer by layer: PEFT's set_adapter would also flip requires_grad.
        layers = tuner_layers(model)
        if not layers or REFERENCE_ADAPTER not in layers[0].lora_A:
            raise RuntimeError("the PiSSA reference adapter was not built (wrap(..., with_reference=True))")
        previous = [layer._active_adapter for layer in layers]
        try:
            for layer in layers:
                layer._active_adapter = [REFERENCE_ADAPTER]
            yield
        finally:
            for layer, active in zip(layers, previous):
                layer._active_adapter = active

    def shipped_lora(self, model):
        return pissa_as_lora(adapter_tensors(model), self.initial), 2 * self.cfg.r, 2 * self.cfg.alpha

    def generator_lora_rank(self) -> int:
        return 2 * self.cfg.r
