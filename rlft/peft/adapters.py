"""Wrap a base model for the configured fine-tuning method and save what was trained.

* full:  every parameter trains; checkpoints are full HF folders.
* lora:  W' = W + (alpha/r) B A with B = 0 at init; checkpoints are PEFT adapter folders.
* pissa: A, B initialised from the top-r singular triplets of W and the frozen base set to the
         residual W - s B A (spec 8.2). Checkpoints are converted to a plain rank-2r LoRA on the
         *original* base, so `PeftModel.from_pretrained(original_base, ckpt)` reproduces the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

PISSA_INIT_DIR = "pissa_init"


def lora_init_flag(method: str, pissa_niter: int | None) -> bool | str:
    if method == "lora":
        return True
    return "pissa" if pissa_niter is None else f"pissa_niter_{pissa_niter}"


def apply_peft(model: torch.nn.Module, peft_cfg, seed: int) -> torch.nn.Module:
    """Return the model to train; adapters are seeded so every rank builds identical ones."""
    if peft_cfg.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=peft_cfg.r,
        lora_alpha=peft_cfg.alpha,
        lora_dropout=peft_cfg.dropout,
        target_modules=list(peft_cfg.target_modules),
        init_lora_weights=lora_init_flag(peft_cfg.method, peft_cfg.pissa_niter),
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    return get_peft_model(model, lora_config)


def save_pissa_init(model, out_dir: Path) -> Path:
    """Save the untrained PiSSA adapter; needed later to convert checkpoints to plain LoRA."""
    path = Path(out_dir) / PISSA_INIT_DIR
    config = model.peft_config["default"]
    flag = config.init_lora_weights
    config.init_lora_weights = True  # saved as an ordinary LoRA so PEFT can subtract it later
    try:
        model.save_pretrained(str(path))
    finally:
        config.init_lora_weights = flag
    return path


def save_trained(model, tokenizer, out_dir: Path, method: str, pissa_init: Path | None = None) -> Path:
    """Write a checkpoint: a PEFT adapter folder (lora/pissa) or a full HF folder (full)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if method == "pissa":
        if pissa_init is None:
            raise ValueError("PiSSA checkpoints need the saved initial adapter (pissa_init)")
        model.save_pretrained(str(out_dir), path_initial_model_for_weight_conversion=str(pissa_init))
    else:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    """Adapter weights in PEFT checkpoint naming (what vLLM and PeftModel load), detached copies."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
