"""ZeRO-3 on a learner rank: each rank holds 1/N of every parameter (docs/design.md#zero-3).

A forward pass gathers each layer's parameters from every rank as it runs (DeepSpeed's hooks). What
reads the weights outside a forward pass (the export to generators, the policy checkpoint, resume
state) gathers them here, a group of whole modules at a time (`deepspeed.zero.GatheredParameters`):
gathering is collective, so every rank runs these functions with the same arguments, and only the
rank that keeps the result (rank 0) copies each group to the CPU before its parameters are released.
The PEFT method says which parameters it needs together (`export_unit`: a LoRA layer's base weight
with its A and B) and computes its weights from one gathered group (`effective_weights(only=...)`).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch


def zero3_options(learner_cfg, element_bytes: int) -> dict:
    """DeepSpeed's zero_optimization keys for stage 3 beyond the stage itself: the gathered working set
    and the reduce buckets bounded by learner.zero3_live_mb (in elements of the model's dtype)."""
    live = (learner_cfg.zero3_live_mb << 20) // element_bytes
    return {"stage3_param_persistence_threshold": learner_cfg.zero3_persistence_threshold,
            "stage3_max_live_parameters": live, "stage3_max_reuse_distance": live,
            "stage3_prefetch_bucket_size": live // 2, "reduce_bucket_size": live}


@contextmanager
def loading_partitioned(ds_config: dict, enabled: bool = True) -> Iterator[None]:
    """Inside, a Hugging Face model's `from_pretrained` builds it partitioned across the ranks
    (deepspeed.zero.Init) and copies each weight from the memory-mapped checkpoint into the ranks' slices,
    one module at a time: no rank holds the whole model, which is what lets a model larger than one
    rank's memory start. Transformers reads the stage from a global it keeps a weak reference to, so the
    config object lives for the block and is unset after it (later loads in this process, a reward model's
    in inline mode, load whole). A model built outside transformers loads whole here and is partitioned by
    deepspeed.initialize, as every model was before. Every rank enters (the weights are scattered)."""
    if not enabled:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    config = HfDeepSpeedConfig(ds_config)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del config


def partition_beside(modules: list[torch.nn.Module], ds_config: dict) -> list:
    """Partitions frozen modules kept beside the trained model (a reference copy) across the ranks: a
    DeepSpeed engine without an optimizer each, whose hooks gather a layer at a time in the forward.
    Returns the engines (they must outlive the modules' use)."""
    import deepspeed

    return [deepspeed.initialize(model=module, config=ds_config)[0] for module in modules]


def is_partitioned(module: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned `module`'s parameters (they carry a ds_id)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def numel(param: torch.nn.Parameter) -> int:
    """Elements of the whole parameter (a partitioned one holds an empty placeholder)."""
    return getattr(param, "ds_numel", param.numel())


def held_elements(modules: Iterable[torch.nn.Module]) -> int:
    """Elements of `modules`' parameters this rank holds: a partitioned parameter's slice, else the whole."""
    return sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
               for module in modules for p in module.parameters())


def unit_buckets(sizes: list[tuple[str, int]], unit_of: Callable[[str], str],
                 bucket_bytes: int | None) -> list[list[str]]:
    """Names (in order) packed into buckets of whole units: a unit is the names sharing `unit_of(name)`,
    sizes in bytes. A bucket is closed before the unit that would take it past bucket_bytes (None: one
    bucket); a unit larger than bucket_bytes is a bucket alone. Units are never split between buckets."""
    units: dict[str, list[tuple[str, int]]] = {}
    for name, size in sizes:
        units.setdefault(unit_of(name), []).append((name, size))
    buckets, current, filled = [], [], 0
    for members in units.values():
        if current and bucket_bytes is not None and filled + sum(s for _, s in members) > bucket_bytes:
            buckets.append(current)
            current, filled = [], 0
        current += [name for name, _ in members]
        filled += sum(s for _, s in members)
    return buckets + ([current] if current else [])


def settle(engine) -> None:
    """Waits for the parameters DeepSpeed prefetched for a next pass and releases every gathered one: a
    gather outside the passes (an export after an evaluation's generate) must not meet one in flight."""
    engine.empty_partition_cache()


@contextmanager
def gathered(params: Iterable[torch.nn.Parameter], enabled: bool = True) -> Iterator[None]:
    """Inside, `params` are whole on every rank (read only; every rank must enter)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None, enabled=enabled):
        yield


def gathered_buckets(module: torch.nn.Module, unit_of: Callable[[str], str], bucket_bytes: int) -> Iterator[set[int]]:
    """Gathers `module`'s parameters bucket by bucket of whole units; yields the ids of each gathered
    bucket's parameters while they are whole."""
    named = dict(module.named_parameters())
    sizes = [(name, numel(p) * p.element_size()) for name, p in named.items()]
    for names in unit_buckets(sizes, unit_of, bucket_bytes):
        with gathered(named[n] for n in names):
            yield {id(named[n]) for n in names}


@torch.no_grad()
def gathered_weights(module: torch.nn.Module, weights_of: Callable[..., dict[str, torch.Tensor]],
                     unit_of: Callable[[str], str], bucket_bytes: int, keep: bool) -> dict[str, torch.Tensor]:
    """`weights_of(module, only=ids)` over every gathered bucket, as CPU copies where `keep` (rank 0;
    {} elsewhere): the whole model never sits gathered on any rank, only its weights on rank 0's CPU."""
    out = {}
    for ids in gathered_buckets(module, unit_of, bucket_bytes):
        part = weights_of(module, only=ids)
        if keep:
            out.update({name: t.detach().cpu().clone() for name, t in part.items()})
    return out


def save_policy(peft, module: torch.nn.Module, tokenizer, out_dir: Path, rank: int, bucket_bytes: int) -> str | None:
    """The policy checkpoint users load, written by rank 0 from gathered weights (every rank calls this).
    A checkpoint of every weight (full fine-tuning's, a LoRA score model's merged one) gets them gathered
    bucket_bytes at a time (`saved_weights`) as `save`'s state_dict; an adapter method saves with its trained
    parameters gathered (the adapter, a small fraction of the model)."""
    gathered_state = ({"state_dict": gathered_weights(module, peft.saved_weights, peft.export_unit, bucket_bytes,
                                                      keep=rank == 0)} if peft.saves_whole_weights(module) else {})
    with gathered((p for p in module.parameters() if p.requires_grad), enabled=not peft.produces_full_model):
        if rank == 0:
            peft.save(module, tokenizer, out_dir, **gathered_state)
    return str(out_dir) if rank == 0 else None


@contextmanager
def master_partitions_attached(optimizer) -> Iterator[None]:
    """Inside, the torch optimizer's groups list this rank's fp32 master partitions: DeepSpeed's ZeRO-3
    optimizer puts them there only for the length of its step (a no-op at the other stages)."""
    if not hasattr(optimizer, "_set_fp32_optimizer_param_groups"):
        yield
        return
    optimizer._set_fp32_optimizer_param_groups()
    try:
        yield
    finally:
        optimizer._clear_fp32_optimizer_param_groups()


def refresh_from_masters(optimizer) -> None:
    """After the fp32 master partitions were written (exact resume): each rank's partition of the model's
    parameters from its masters, then the parameters kept whole on every rank (below the persistence
    threshold) from those partitions, as DeepSpeed does after an optimizer step."""
    for group in range(len(optimizer.fp16_partitioned_groups_flat)):
        optimizer._reassign_or_swap_out_partitioned_parameters(group)
    if optimizer.persistent_parameters:
        optimizer.persistent_parameters[0].all_gather(optimizer.persistent_parameters)
