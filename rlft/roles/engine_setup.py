"""What a learner rank's DeepSpeed engine is built from: its config, the optimizer and LR schedule,
and the CPU accelerator's set-up (rlft.roles.learner builds the engine)."""

from __future__ import annotations

import math

import torch

from rlft.roles import zero3


def lr_lambda(warmup: int, total: int, schedule: str):
    """Multiplier of the peak LR at optimizer step `step` (linear warm-up, then decay)."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def deepspeed_config(cfg, world_size: int, grad_accum: int, dtype: torch.dtype) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": cfg.train.micro_batch_size * grad_accum * world_size,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": {"stage": cfg.learner.zero_stage,
                              **(zero3.zero3_options(cfg.learner, dtype.itemsize) if cfg.learner.zero_stage == 3 else {})},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class SkippingAdamW(torch.optim.AdamW):
    """AdamW that skips a step whose gradients are not finite. DeepSpeed's ZeRO and 16-bit
    optimizers skip such steps themselves; at ZeRO stage 0 in float32 the engine steps the torch
    optimizer directly. `overflow` is what the engine reads: a skipped step leaves the LR schedule
    where it is and counts in `engine.skipped_steps`."""

    overflow = False

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.overflow = bool(grads) and not bool(torch.stack([g.isfinite().all() for g in grads]).all())
        if self.overflow:
            return None
        return super().step(closure)


def without_shared_memory_reduce() -> None:
    """On DeepSpeed's CPU accelerator, mark its shared-memory all-reduce op unavailable before the
    communication backend starts: the backend compiles it on first use on a machine (40-80 s on 2 cores)
    and loads it in every rank, but only DeepSpeed's inference path calls it; training reduces through
    the process group (gloo)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
