"""PaCA, partial connection adaptation (docs/algorithms.md#paca): r random input columns of each target linear train.

The trainable tensor holds the chosen columns divided by the scaling s = alpha/r, so the
effective weight is the base with columns I replaced by s * w_paca: one GEMM per forward.
The backward keeps only the r selected input channels X[:, I] for the weight gradient,
s * G^T X[:, I] (the method's activation saving); the frozen base is never written, so the
reference policy is the base itself.

Generators get it losslessly as a LoRA: A selects the columns (A[j, I_j] = 1), B is the change
of those columns, s * w_paca - W0[:, I], and alpha = r makes the LoRA scaling 1.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rlft.peft.base import AdapterConfig, adapter_parameters
from rlft.peft.lora import save_adapter_folder
from rlft.peft.partial import PartialLinear, PartialLinearMethod, partial_linears
from rlft.sync.payload import LoraPayload, adapter_config_dict


class PaCAConfig(AdapterConfig):
    method: Literal["paca"] = Field("paca", description="PEFT method (rlft.peft.PEFT_METHODS).")


class _PacaLinearFn(torch.autograd.Function):
    """y = x W'^T with W' = W, columns I := s * paca; saves x[..., I], not x."""

    @staticmethod
    def forward(ctx, x, weight, paca, columns, scale):
        effective = weight.index_copy(1, columns, scale * paca)
        ctx.save_for_backward(x.index_select(-1, columns), weight, paca, columns)
        ctx.scale = scale
        return x @ effective.t()

    @staticmethod
    def backward(ctx, grad_out):
        x_selected, weight, paca, columns = ctx.saved_tensors
        grad_x = grad_paca = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ weight.index_copy(1, columns, ctx.scale * paca)
        if ctx.needs_input_grad[2]:
            grad_paca = ctx.scale * grad_out.reshape(-1, grad_out.shape[-1]).t() @ x_selected.reshape(-1, columns.numel())
        return grad_x, None, grad_paca, None, None


class PacaLinear(PartialLinear):
    trainable_name = "paca"

    def __init__(self, linear: torch.nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__(linear)
        if rank > self.in_features:
            raise ValueError(f"peft.r={rank} exceeds the {self.in_features} input columns of a target layer")
        self.scale = alpha / rank
        columns = torch.randperm(self.in_features, generator=generator)[:rank].sort().values
        self.register_buffer("columns", columns.to(self.weight.device))
        self.paca = torch.nn.Parameter(self.weight.detach()[:, columns] / self.scale)

    def effective_weight(self):
        return self.weight.index_copy(1, self.columns, self.scale * self.paca)

    def forward(self, x):
        if self.use_reference:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        y = _PacaLinearFn.apply(x, self.weight, self.paca, self.columns, self.scale)
        return y if self.bias is None else y + self.bias

    def as_lora(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) with B A = W' - W: A the column selector, B the change of the selected columns."""
        selector = torch.zeros(self.columns.numel(), self.in_features, dtype=self.weight.dtype, device=self.weight.device)
        selector[torch.arange(self.columns.numel()), self.columns] = 1.0
        change = self.scale * self.paca.detach() - self.weight.detach()[:, self.columns]
        return selector, change


class PaCA(PartialLinearMethod):
    name = "paca"
    config_cls = PaCAConfig
    payload_kind = "lora"

    @classmethod
    def trained_parameters(cls, cfg, shape):
        return adapter_parameters(cfg, shape, lambda inp, out: out)  # r columns of out values each

    def make_layer(self, linear, generator):
        return PacaLinear(linear, self.cfg.r, self.cfg.alpha, generator)  # the same columns on every rank

    def lora_tensors(self, model) -> dict[str, torch.Tensor]:
        """The PaCA change as LoRA tensors in PEFT checkpoint naming."""
        tensors = {}
        for name, layer in partial_linears(model).items():
            selector, change = layer.as_lora()
            tensors[f"base_model.model.{name}.lora_A.weight"] = selector.cpu().clone()
            tensors[f"base_model.model.{name}.lora_B.weight"] = change.cpu().clone()
        return tensors

    def lora_config(self, model) -> dict:
        """A plain LoRA config (scaling 1) that records the base model, as PEFT's own adapters do."""
        from peft import LoraConfig

        config = LoraConfig(r=self.cfg.r, lora_alpha=self.cfg.r, target_modules=list(self.cfg.target_modules),
                            task_type="CAUSAL_LM", base_model_name_or_path=getattr(model, "name_or_path", None))
        return adapter_config_dict(config, self.cfg.r, self.cfg.r)

    def generator_lora_rank(self):
        return self.cfg.r

    def export(self, model, version):
        return LoraPayload.build(version, self.lora_tensors(model), self.lora_config(model))

    def save(self, model, tokenizer, out_dir):
        """A PEFT LoRA folder on the original base (PeftModel.from_pretrained, vLLM)."""
        return save_adapter_folder(self.export(model, version=0), tokenizer, out_dir)
