"""Full fine-tuning: every parameter trains; checkpoints are full HF folders; no reference copy."""

from __future__ import annotations

from pathlib import Path

from rlft.peft.base import PeftMethod


class FullFineTuning(PeftMethod):
    name = "full"

    def wrap(self, model, seed, with_reference):
        if with_reference:
            raise ValueError("peft.method=full keeps no reference model; use lora or pissa for a KL reference")
        return model

    def save(self, model, tokenizer, out_dir):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out_dir))
        return out_dir
