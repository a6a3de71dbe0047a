"""A learner rank's whole training state, as safetensors + JSON (docs/design.md#exact-resume).

What a rank needs to continue as if it had never stopped:

* the policy's tensors that training changes (the PEFT method says which: `resume_tensors`),
  written once by rank 0 (ranks are replicas up to ZeRO-2) and loaded by every rank;
* its optimizer state: the torch optimizer's per-parameter tensors (Adam moments, step), keyed by
  parameter name, or, under ZeRO-1/2/3, by the rank's flat fp32 partition (then with the partition's
  values: ZeRO keeps the master weights there). At ZeRO-3 these masters are the only copy of the
  trained weights written: a resumed rank rebuilds its slice of the parameters from them, and the
  policy tensors above are not written;
* the LR scheduler, the engine's step counters, and the torch and Python RNG states.

Nothing here unpickles: tensors are read with safetensors, the rest is JSON. A checkpoint written
by another world size or ZeRO stage is refused by name (the partitions would not line up).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlft.errors import ResumeError
from rlft.peft.base import torch_optimizer
from rlft.roles.zero3 import is_partitioned, master_partitions_attached, refresh_from_masters

MODEL_FILE = "model_state.safetensors"


def rank_files(folder: Path, rank: int) -> tuple[Path, Path]:
    return Path(folder) / f"learner_rank{rank}.safetensors", Path(folder) / f"learner_rank{rank}.json"


def base_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer whose state a checkpoint holds (an error when there is none)."""
    found = torch_optimizer(optimizer)
    if found is None:
        raise ResumeError(f"no torch optimizer inside {type(optimizer).__name__}")
    return found


def _optimizer_keys(engine) -> dict[int, str]:
    """id(tensor the torch optimizer steps) -> stable name: the parameter's name, or ZeRO's partition."""
    keys = {id(p): f"param.{name}" for name, p in engine.module.named_parameters()}
    zero = engine.optimizer
    partitions = getattr(zero, "single_partition_of_fp32_groups", None) or getattr(zero, "fp32_partitioned_groups_flat", [])
    for i, flat in enumerate(partitions):  # ZeRO-1/2, ZeRO-3
        keys[id(flat)] = f"fp32_partition.{i}"
    return keys


def optimizer_state(engine) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON) of the optimizer: per-parameter state, the masters of ZeRO partitions, groups."""
    base, keys = base_optimizer(engine.optimizer), _optimizer_keys(engine)
    tensors, scalars = {}, {}
    for group in base.param_groups:
        for p in group["params"]:
            if id(p) not in keys:
                raise ResumeError("the optimizer steps a tensor that is neither a named parameter nor a ZeRO partition")
            key = keys[id(p)]
            if key.startswith("fp32_partition."):
                tensors[f"master/{key}"] = p.detach()
            for name, value in base.state.get(p, {}).items():
                if torch.is_tensor(value):
                    tensors[f"state/{key}/{name}"] = value
                else:
                    scalars[f"{key}/{name}"] = value
    groups = [{k: v for k, v in g.items() if k != "params"} for g in base.param_groups]
    return tensors, {"groups": groups, "scalars": scalars}


def load_optimizer_state(engine, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    base, keys = base_optimizer(engine.optimizer), _optimizer_keys(engine)
    if len(meta["groups"]) != len(base.param_groups):
        raise ResumeError(f"checkpoint has {len(meta['groups'])} optimizer groups, this learner {len(base.param_groups)}")
    for group, saved in zip(base.param_groups, meta["groups"]):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
        for p in group["params"]:
            key = keys[id(p)]
            if f"master/{key}" in tensors:
                p.data.copy_(tensors[f"master/{key}"])
            state = {name.rsplit("/", 1)[1]: t.to(p.device).clone() for name, t in tensors.items()
                     if name.startswith(f"state/{key}/")}
            state.update({name.rsplit("/", 1)[1]: v for name, v in meta["scalars"].items() if name.startswith(f"{key}/")})
            if state:
                base.state[p] = state


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda.{i}"] = state
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def load_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


ENGINE_COUNTERS = ("global_steps", "global_samples", "micro_steps", "skipped_steps")


def save_rank_state(engine, peft, rank: int, world_size: int, zero_stage: int, folder: Path) -> None:
    """This rank's files (and, on rank 0, the model's)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not is_partitioned(engine.module):  # at ZeRO-3 the master partitions hold the trained weights
        save_file({k: v.detach().cpu().contiguous() for k, v in peft.resume_tensors(engine.module).items()},
                  folder / MODEL_FILE)
    with master_partitions_attached(engine.optimizer):
        opt_tensors, opt_meta = optimizer_state(engine)
    rng_tensors, rng_meta = rng_state()
    tensors_path, meta_path = rank_files(folder, rank)
    save_file({k: v.detach().cpu().contiguous() for k, v in {**opt_tensors, **rng_tensors}.items()}, tensors_path)
    meta = {"world_size": world_size, "zero_stage": zero_stage, "optimizer": opt_meta, "rng": rng_meta,
            "scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
            "engine": {name: getattr(engine, name) for name in ENGINE_COUNTERS}, "peft": peft.state()}
    meta_path.write_text(json.dumps(meta))


def load_rank_state(engine, peft, rank: int, world_size: int, zero_stage: int, folder: Path) -> None:
    folder = Path(folder)
    tensors_path, meta_path = rank_files(folder, rank)
    partitioned = is_partitioned(engine.module)
    for path in ([] if partitioned else [folder / MODEL_FILE]) + [tensors_path, meta_path]:
        if not path.is_file():
            raise ResumeError(f"{folder}: missing {path.name} (not a complete learner checkpoint for rank {rank})")
    meta = json.loads(meta_path.read_text())
    if (meta["world_size"], meta["zero_stage"]) != (world_size, zero_stage):
        raise ResumeError(f"{folder}: written by {meta['world_size']} learner ranks at ZeRO stage {meta['zero_stage']}; "
                          f"this run has {world_size} at stage {zero_stage} (set learner.count / learner.zero_stage to match)")
    if not partitioned:
        device = next(engine.module.parameters()).device
        peft.load_resume_tensors(engine.module, {k: v.to(device) for k, v in load_file(folder / MODEL_FILE).items()})
    tensors = load_file(tensors_path)
    with master_partitions_attached(engine.optimizer):
        load_optimizer_state(engine, tensors, meta["optimizer"])
    if partitioned:
        refresh_from_masters(engine.optimizer)
    if meta["scheduler"] is not None and engine.lr_scheduler is not None:
        engine.lr_scheduler.load_state_dict(meta["scheduler"])
        for group, lr in zip(base_optimizer(engine.optimizer).param_groups, engine.lr_scheduler.get_last_lr()):
            group["lr"] = lr
    for name, value in meta["engine"].items():
        setattr(engine, name, value)
    peft.load_state(meta["peft"])
    load_rng_state(tensors, meta["rng"])
