"""Full fine-tuning: every parameter trains; checkpoints are full HF folders.

Every weight moves, so the reference policy (DPO, a KL term) needs a second copy: with
`with_reference`, `wrap` keeps a frozen deep copy of the initial model outside the trained
module (checkpoints never see it; at ZeRO-3 the learner partitions it across ranks too:
`outside_modules`), and inside `reference(model)` a call of the model runs the copy instead (an
instance attribute shadowing `forward`, which `nn.Module.__call__` looks up).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field

from rlft.peft.base import PeftConfig, PeftMethod


class FullConfig(PeftConfig):
    """`peft.method: full` has no fields of its own."""

    method: Literal["full"] = Field("full", description="PEFT method (rlft.peft.PEFT_METHODS).")


class FullFineTuning(PeftMethod):
    name = "full"
    config_cls = FullConfig
    has_reference = True
    produces_full_model = True
    heads = ("lm", "score", "value")  # a score or value model saves as its own HF folder like any other
    zero3 = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.frozen = None  # the reference copy, when wrap was asked to keep one

    def wrap(self, model, seed, with_reference, load_copy=None):
        if with_reference:  # a partitioned model's parameters are bound to their partitions: load it again
            self.frozen = (load_copy() if load_copy else copy.deepcopy(model)).eval().requires_grad_(False)
        return model

    def outside_modules(self):
        return [] if self.frozen is None else [self.frozen]

    @contextmanager
    def reference(self, model):
        if self.frozen is None:
            raise RuntimeError("no frozen reference copy was kept (wrap(..., with_reference=True))")
        param = next(model.parameters())  # DeepSpeed may have moved or cast the model after wrap
        self.frozen.to(device=param.device, dtype=param.dtype)
        shadowed = model.__dict__.get("forward")
        model.forward = self.frozen.__call__  # its own hooks run (ZeRO-3 gathers the copy's layers in them)
        try:
            yield
        finally:
            if shadowed is None:
                del model.forward
            else:
                model.forward = shadowed

    def save(self, model, tokenizer, out_dir, state_dict=None):
        """state_dict: the weights to write when the model does not hold them whole (ZeRO-3 gathers them)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir), state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out_dir))
        return out_dir
