"""LIFT, low-rank informed sparse fine-tuning (docs/algorithms.md#lift): only the principal weights train.

For each target matrix W (m x n), the k = min((m + n) r, m n) entries of largest magnitude in
its rank-r_f approximation form the mask; only those entries train. They live in a trainable
vector of k values (so AdamW keeps moments for k entries only, and weight decay touches only
them) that the forward writes into a copy of the frozen base. Every `update_interval` optimizer
steps the mask is re-selected on the current weights: the values are folded into the base, the
new entries read out, and the Adam moments of entries kept by both masks carried over (new
entries start at zero, the LIFT paper's Algorithm 1).

Generators get only what changed since the last sync: the entries of every mask active since
then, as (index, value) pairs (rlft.sync.payload.SparsePayload).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field

from rlft.peft.base import AdapterConfig, adapter_parameters, torch_optimizer
from rlft.peft.partial import PartialLinear, PartialLinearMethod, partial_linears, save_full_folder
from rlft.sync.payload import SparsePayload, SparseUpdate

log = logging.getLogger(__name__)


class LIFTConfig(AdapterConfig):
    method: Literal["lift"] = Field("lift", description="PEFT method (rlft.peft.PEFT_METHODS).")
    lift_filter_rank: int | None = Field(
        None, ge=1, description="LIFT: rank of the approximation whose largest entries are trained (None: r)."
    )
    lift_update_interval: int = Field(
        200, ge=0, description="LIFT: re-select the trained entries every N optimizer steps (0: never; "
                               "a refresh remaps Adam moments, so it needs learner.zero_stage=0)."
    )


def lift_budget(rows: int, cols: int, lora_rank: int) -> int:
    """Entries trained per matrix: as many as a LoRA of rank r has parameters (at most all)."""
    return min((rows + cols) * lora_rank, rows * cols)


def principal_mask(weight: torch.Tensor, filter_rank: int, k: int) -> torch.Tensor:
    """Sorted flat indices of the k largest |entries| of the rank-`filter_rank` approximation of W."""
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    r = min(filter_rank, s.numel())
    approx = (u[:, :r] * s[:r]) @ vh[:r]
    return approx.abs().reshape(-1).topk(k).indices.sort().values


def carry_over(old_index: torch.Tensor, new_index: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    """Moments for the new mask: the old value where an entry was in the old mask too, else 0.
    Both index vectors are sorted."""
    pos = torch.searchsorted(old_index, new_index).clamp(max=old_index.numel() - 1)
    kept = old_index[pos] == new_index
    return torch.where(kept, moment[pos], torch.zeros_like(moment[pos]))


def same_on_every_rank(index: torch.Tensor) -> torch.Tensor:
    """Rank 0's mask on every data-parallel rank (SVDs run with other thread counts may break ties
    differently, and ranks that train different entries would drift apart)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(index, src=0)
    return index


class LiftLinear(PartialLinear):
    trainable_name = "values"

    def __init__(self, linear: torch.nn.Linear, lora_rank: int, filter_rank: int):
        super().__init__(linear)
        self.filter_rank = filter_rank
        self.k = lift_budget(self.out_features, self.in_features, lora_rank)
        index = principal_mask(self.weight, filter_rank, self.k).to(self.weight.device)
        self.register_buffer("index", index)
        self.values = torch.nn.Parameter(self.weight.detach().reshape(-1)[index].clone())
        # the original value of every entry that was ever trained (the reference policy), and the
        # entries trained since the last sync (what the next payload carries)
        self.register_buffer("original_index", index.clone())
        self.register_buffer("original_values", self.values.detach().clone())
        self.register_buffer("pending", index.clone(), persistent=False)

    def effective_weight(self):
        return self.weight.reshape(-1).index_put((self.index,), self.values).view_as(self.weight)

    def reference_weight(self):
        return self.weight.reshape(-1).index_put((self.original_index,), self.original_values).view_as(self.weight)

    @torch.no_grad()
    def refresh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold the trained values into the base and select the new mask; returns (old, new) index."""
        old = self.index
        self.weight.reshape(-1)[old] = self.values.detach()
        new = same_on_every_rank(principal_mask(self.weight, self.filter_rank, self.k).to(old.device))
        fresh = new[~torch.isin(new, self.original_index)]
        self.original_index = torch.cat([self.original_index, fresh])
        self.original_values = torch.cat([self.original_values, self.weight.reshape(-1)[fresh]])
        self.index = new
        self.values.data = self.weight.reshape(-1)[new].clone()
        self.pending = torch.unique(torch.cat([self.pending, new]))
        return old, new

    def take_pending(self) -> SparseUpdate:
        """The entries trained since the last call, with their current values."""
        index = self.pending
        self.pending = self.index.clone()
        return SparseUpdate(index, self.effective_weight().detach().reshape(-1)[index], tuple(self.weight.shape))


def optimizer_state_of(optimizer, param: torch.nn.Parameter) -> dict:
    """The torch optimizer's state of `param`, looking through DeepSpeed's wrappers."""
    base = torch_optimizer(optimizer)
    if base is not None and any(p is param for g in base.param_groups for p in g["params"]):
        return base.state[param]
    raise RuntimeError("LIFT cannot find its values in the optimizer (DeepSpeed ZeRO keeps flat copies of them); "
                       "a mask refresh needs learner.zero_stage=0, or set peft.lift_update_interval=0")


class LIFT(PartialLinearMethod):
    name = "lift"
    config_cls = LIFTConfig
    payload_kind = "sparse"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.steps = 0

    @classmethod
    def validate(cls, run_cfg):
        interval, stage = run_cfg.peft.lift_update_interval, run_cfg.learner.zero_stage
        if interval and stage:
            raise ValueError(f"peft.method=lift re-selects its trained entries every peft.lift_update_interval="
                             f"{interval} steps and remaps their Adam moments, which DeepSpeed ZeRO "
                             f"stage {stage} keeps in flat partitions: set learner.zero_stage=0, or "
                             "peft.lift_update_interval=0 (a fixed mask)")

    @classmethod
    def trained_parameters(cls, cfg, shape):
        return adapter_parameters(cfg, shape, lambda inp, out: inp + out)  # (in + out) r entries per matrix

    def make_layer(self, linear, generator):
        return LiftLinear(linear, self.cfg.r, self.cfg.lift_filter_rank or self.cfg.r)

    def after_step(self, model, optimizer) -> dict[str, float]:
        self.steps += 1
        interval = self.cfg.lift_update_interval
        if not interval or self.steps % interval:
            return {}
        kept = total = 0
        for layer in partial_linears(model).values():
            state = optimizer_state_of(optimizer, layer.values)
            old, new = layer.refresh()
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = carry_over(old, new, state[key])
            kept += int(torch.isin(new, old).sum())
            total += new.numel()
        log.info("LIFT mask refresh at step %d: %.1f%% of the trained entries kept", self.steps, 100 * kept / max(1, total))
        return {"peft/mask_refreshes": 1.0}

    def state(self):
        return {"steps": self.steps}

    def load_state(self, state):
        self.steps = state["steps"]

    def resume_tensors(self, model):
        """The trained values, and what a refresh changes: the base (folded values), the mask and
        every entry ever trained with its original value."""
        tensors = super().resume_tensors(model)
        for name, layer in partial_linears(model).items():
            for attr in ("weight", "index", "original_index", "original_values"):
                tensors[f"{name}.{attr}"] = getattr(layer, attr).detach()
        return tensors

    def mark_all_changed(self, model):
        for layer in partial_linears(model).values():
            layer.pending = torch.unique(layer.original_index)  # every entry ever trained (the mask among them)

    def export(self, model, version):
        updates = {f"{name}.weight": layer.take_pending() for name, layer in partial_linears(model).items()}
        return SparsePayload.build(version, updates)

    def save(self, model, tokenizer, out_dir):
        return save_full_folder(model, tokenizer, out_dir, self.effective_weights(model))
