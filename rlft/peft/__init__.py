"""PEFT methods: one class per file, registered by name (`peft.method` in the config).

Each method's file also holds its config section (`<Method>.config_cls`): the `peft` section of a
recipe is validated by the class its `method` picks (rlft.config), so adding a method touches only
its file and one line below. Entries are imported on first use.
"""

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

# The method of a recipe whose `peft` section names none (or that has no `peft` section).
DEFAULT_METHOD = "lora"
