"""PEFT methods: one class per file, registered by name (`peft.method` in the config)."""

from __future__ import annotations

from rlft.registry import Registry

PEFT_METHODS: Registry = Registry("peft method", {
    "full": "rlft.peft.full:FullFineTuning",
    "lora": "rlft.peft.lora:LoRA",
    "pissa": "rlft.peft.pissa:PiSSA",
    "paca": "rlft.peft.paca:PaCA",
    "lift": "rlft.peft.lift:LIFT",
    "hft": "rlft.peft.hft:HFT",
})
