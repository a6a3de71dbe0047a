"""Checks of a whole run before any role starts: each error names the key, the limit and a fix.

`check_run(cfg, spec, peft)` checks the config alone (the algorithm and the PEFT method add their own
checks through `spec.validate` and `peft_cls.validate`); with `data=` it also checks the tokenised data
against the limits (prompt lengths, rlft.data.lengths, with the tokens the algorithm's data source
samples after a training prompt; or the model family's own check), so that a prompt that cannot fit,
or a sequence longer than the model's context, stops the run at once instead of failing inside a role
(or training silently on cut sequences).
"""

from __future__ import annotations

from rlft.data.lengths import check_lengths
from rlft.errors import RunError
from rlft.peft import PEFT_METHODS
from rlft.registry import UnknownName
from rlft.roles import ROLES
from rlft.sources import SOURCES


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
                         f"reloaded after each update) or peft.method to one that ships a delta ({_methods('payload_kind')})")
    if cfg.rollout.max_staleness and "generator" not in spec.roles:
        raise ValueError(f"rollout.max_staleness={cfg.rollout.max_staleness}: algorithm {spec.name!r} generates "
                         "nothing, so there is no generation to overlap with training; set it to 0")
    if cfg.rollout.in_flight_updates:
        check_in_flight_updates(cfg, spec, peft_cls)
    peft_cls.validate(cfg)
    if cfg.learner.zero_stage == 3 and not peft_cls.zero3:
        raise ValueError(f"learner.zero_stage=3 partitions every parameter across the learner ranks, and "
                         f"peft.method={cfg.peft.method} reads or rewrites its weights whole outside the forward pass; "
                         f"set learner.zero_stage to 2 or lower, or peft.method to one that trains at stage 3 "
                         f"({_methods('zero3')})")
    if spec.model_head not in peft_cls.heads:
        offer = ", ".join(name for name in PEFT_METHODS if spec.model_head in PEFT_METHODS[name].heads)
        raise ValueError(f"algorithm {spec.name!r} trains a {spec.model_head!r}-head model, which "
                         f"peft.method={cfg.peft.method} cannot train; use one that can ({offer})")
    if spec.needs_reference(cfg) and not peft_cls.has_reference:
        raise ValueError(f"algorithm {spec.name!r} needs a reference policy, which peft.method={cfg.peft.method} "
                         f"does not keep; use one that does ({_methods('has_reference')}), or turn the KL term off")
    for kind in ("learner", *spec.roles):
        try:
            ROLES[kind].get(getattr(cfg.runtime.roles, kind))
        except UnknownName as err:
            raise RunError(f"runtime.roles.{kind}: {err}") from None
    spec.validate(cfg)


def check_in_flight_updates(cfg, spec, peft_cls) -> None:
    """rollout.in_flight_updates needs batches generated ahead, an engine that pauses between its steps, and
    weights written into it (a vLLM LoRA binds each request to the adapter it started with)."""
    if not cfg.rollout.max_staleness:
        raise ValueError("rollout.in_flight_updates=true updates generators while they sample batches ahead, and "
                         "rollout.max_staleness=0 samples none ahead; set rollout.max_staleness >= 1")
    generator = ROLES["generator"].get(cfg.runtime.roles.generator)
    if not getattr(generator, "pauses_for_updates", False):
        raise ValueError(f"rollout.in_flight_updates=true: the generator role {cfg.runtime.roles.generator!r} "
                         f"(algorithm {spec.name!r}) cannot load weights while it samples; set it to false")
    if cfg.sync.weights == "adapter" and peft_cls.payload_kind == "lora":
        raise ValueError(f"rollout.in_flight_updates=true: peft.method={cfg.peft.method} with sync.weights=adapter "
                         "runs the policy as a vLLM LoRA, and a request keeps the adapter it started with; set "
                         "sync.weights=merged (or rollout.in_flight_updates=false)")


def _methods(attribute: str) -> str:
    """The registered PEFT methods whose class has a true `attribute`, for error messages."""
    return ", ".join(name for name in PEFT_METHODS if getattr(PEFT_METHODS[name], attribute))


def check_data_lengths(cfg, spec, model_path, tokenizer, chat: bool, train_examples, eval_examples) -> None:
    """Every prompt fits with the tokens the algorithm's source samples after it (`sampled_tokens`)."""
    check_lengths(cfg, model_path, tokenizer, chat, train_examples, eval_examples,
                  sampled_tokens=SOURCES[spec.source].sampled_tokens(cfg))


def check_run(cfg, spec, peft_cls, data: tuple | None = None, check_data=None, family=None) -> None:
    """RunError (a ValueError) naming what is wrong, before any role starts. `data`: (model path,
    tokenizer, chat template used, train examples, eval examples); `check_data` is the model family's
    own check of them (rlft.families), None for the prompt lengths (`check_data_lengths`); `family`:
    the base model's family, which must offer the algorithm's model head."""
    try:
        check_config(cfg, spec, peft_cls)
        if family is not None and spec.model_head not in family.heads:
            raise ValueError(f"algorithm {spec.name!r} trains a {spec.model_head!r}-head model; the base model "
                             f"is a {family.name} model, which has only {', '.join(family.heads)}")
        if data is not None:
            if check_data is None:
                check_data_lengths(cfg, spec, *data)
            else:
                check_data(cfg, *data)
    except RunError:
        raise
    except ValueError as err:
        raise RunError(str(err)) from None
