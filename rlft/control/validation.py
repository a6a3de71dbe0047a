"""Checks of a whole run before any role starts: each error names the key, the limit and a fix.

`check_run(cfg, spec, peft)` checks the config alone (the algorithm adds its own checks through
`spec.validate`); with `data=` it also checks the tokenised data against the limits, so that a
prompt that cannot fit, or a sequence longer than the model's context, stops the run at once
instead of failing inside a role (or training silently on cut sequences).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlft.data.collate import encode_prompt
from rlft.registry import UnknownName
from rlft.roles import ROLES


class RunError(ValueError):
    """A run cannot start as configured; the message names the key or example and a fix."""


def check_config(cfg, spec, peft_cls) -> None:
    per_iteration = spec.optimizer_steps(cfg)
    if cfg.train.steps % per_iteration:
        raise ValueError(f"train.steps={cfg.train.steps} is not a multiple of the {per_iteration} optimizer steps "
                         f"that algorithm {spec.name!r} takes per batch (rollout.mini_batches x rollout.epochs)")
    if cfg.train.batch_size < cfg.learner.count * cfg.train.micro_batch_size:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is smaller than learner.count x "
                         f"train.micro_batch_size = {cfg.learner.count} x {cfg.train.micro_batch_size}: every rank "
                         "needs at least one micro-batch per step; lower train.micro_batch_size or raise train.batch_size")
    if "generator" in spec.roles and peft_cls.payload_kind is None and cfg.sync.weights == "adapter":
        raise ValueError(f"algorithm {spec.name!r} runs generators, and sync.weights=adapter ships adapters: "
                         f"peft.method={cfg.peft.method} has none; set sync.weights=merged (every weight is "
                         "reloaded after each update) or peft.method to one that ships a delta (lora, pissa, paca, lift, hft)")
    if cfg.rollout.max_staleness and "generator" not in spec.roles:
        raise ValueError(f"rollout.max_staleness={cfg.rollout.max_staleness}: algorithm {spec.name!r} generates "
                         "nothing, so there is no generation to overlap with training; set it to 0")
    if cfg.peft.method == "lift" and cfg.peft.lift_update_interval and cfg.learner.zero_stage:
        raise ValueError(f"peft.method=lift re-selects its trained entries every peft.lift_update_interval="
                         f"{cfg.peft.lift_update_interval} steps and remaps their Adam moments, which DeepSpeed ZeRO "
                         f"stage {cfg.learner.zero_stage} keeps in flat partitions: set learner.zero_stage=0, or "
                         "peft.lift_update_interval=0 (a fixed mask)")
    if spec.needs_reference(cfg) and not peft_cls.has_reference:
        raise ValueError(f"algorithm {spec.name!r} needs a reference policy, which peft.method={cfg.peft.method} "
                         "does not keep; use lora or pissa, or turn the KL term off")
    for kind in ("learner", *spec.roles):
        try:
            ROLES[kind].get(getattr(cfg.runtime.roles, kind))
        except UnknownName as err:
            raise RunError(f"runtime.roles.{kind}: {err}") from None
    spec.validate(cfg)


def model_context(model_path: Path) -> int | None:
    config = json.loads((Path(model_path) / "config.json").read_text())
    return config.get("max_position_embeddings")


def _where(split: str, index: int, example) -> str:
    source = example.meta.get("source") if isinstance(example.meta, dict) else None
    return f"{split} example {index}" + (f" ({source})" if source else "")


def check_lengths(cfg, spec, model_path, tokenizer, chat: bool, train_examples, eval_examples) -> None:
    """Every prompt fits train.max_length (with room for the sampled tokens), which fits the model."""
    max_length = cfg.train.max_length
    context = model_context(model_path)
    if context is not None and max_length > context:
        raise ValueError(f"train.max_length={max_length} is longer than the model's context "
                         f"(max_position_embeddings={context} in {model_path}/config.json); lower train.max_length")
    # Training rows: the prompt plus at least one response token, or plus every sampled token.
    room = cfg.rollout.max_new_tokens if spec.source == "rollouts" else 1
    limits = (("train", train_examples, room, max_length, "train.max_length"),
              ("eval", eval_examples, cfg.eval.max_new_tokens, context, "the model's context"))
    for split, examples, room, limit, name in limits:
        if limit is None:
            continue
        for index, example in enumerate(examples):
            length = len(encode_prompt(tokenizer, example.prompt, chat))
            if length + room > limit:
                raise ValueError(
                    f"{_where(split, index, example)}: prompt of {length} tokens + {room} more does not fit "
                    f"{name} ({limit}); raise train.max_length (model context: {context}), lower the "
                    "generated tokens, or drop the example"
                )


def check_run(cfg, spec, peft_cls, data: tuple | None = None, check_data=check_lengths) -> None:
    """RunError (a ValueError) naming what is wrong, before any role starts; `check_data` is the model
    family's check of the data (rlft.families)."""
    try:
        check_config(cfg, spec, peft_cls)
        if data is not None:
            check_data(cfg, spec, *data)
    except RunError:
        raise
    except ValueError as err:
        raise RunError(str(err)) from None
