"""Cluster mode's two concerns outside rlft.runtime: where a run's files live, and what each role's
members reserve from Ray.

Storage: the controller (the Ray driver) resolves the model folder and creates the run folder; the roles
load that model and write checkpoints into that folder. In cluster mode the roles run on other
nodes, where a path on the driver's own disk does not exist, so model and run storage must be a
folder that every node mounts at the same path: `runtime.storage` (or an absolute
`run.output_dir` that is such a folder). `resolve_storage` turns the config into absolute,
shared paths on the driver, before anything is built or any role starts; in the other modes it
makes the run folder absolute, so no process resolves it against its own working directory.

Resources: `role_bundles` is what one member of each role reserves; learner ranks are placed
with a placement group of these bundles (rlft.runtime).
"""

from __future__ import annotations

import os
from pathlib import Path

from rlft import run_modes
from rlft.errors import RunError


def resolve_storage(cfg):
    """cfg with an absolute run folder; in cluster mode it and the model cache lie on shared storage."""
    if run_modes.on_this_machine(cfg.runtime.mode):
        output_dir = Path(cfg.run.output_dir).expanduser().absolute()
        return cfg.model_copy(update={"run": cfg.run.model_copy(update={"output_dir": str(output_dir)})})
    storage = cfg.runtime.storage
    if storage is not None and not Path(storage).expanduser().is_absolute():
        raise RunError(f"runtime.storage={storage!r} is relative: in cluster mode it must be an absolute folder "
                       "that every node mounts at the same path")
    output_dir = Path(cfg.run.output_dir).expanduser()
    if not output_dir.is_absolute():
        if storage is None:
            raise RunError(
                f"cluster mode: run.output_dir={cfg.run.output_dir!r} is relative, so each node would write its part "
                "of the run to its own disk; set runtime.storage=/shared/folder (mounted at the same path on every "
                "node) or an absolute run.output_dir on such a folder"
            )
        output_dir = Path(storage).expanduser() / output_dir
    root = Path(storage).expanduser() if storage is not None else output_dir
    model = cfg.model
    if model.cache_dir is not None:
        model = model.model_copy(update={"cache_dir": str(Path(model.cache_dir).expanduser().absolute())})
    elif not os.environ.get("RLFT_CACHE"):  # built/converted/downloaded models: where every node reads them
        model = model.model_copy(update={"cache_dir": str(root / ("cache" if storage is not None else ".cache"))})
    return cfg.model_copy(update={
        "run": cfg.run.model_copy(update={"output_dir": str(output_dir)}),
        "model": model,
        "warm_start": cfg.warm_start.model_copy(update={"overrides": [
            *cfg.warm_start.overrides, *warm_start_runtime_overrides(cfg.runtime)]}),
        "teacher": cfg.teacher.model_copy(update={"overrides": [
            *cfg.teacher.overrides, *warm_start_runtime_overrides(cfg.runtime)]}),
    })


def warm_start_runtime_overrides(runtime_cfg) -> list[str]:
    """The warm start (an SFT run before this one) runs on the same cluster and storage as this run."""
    found = ["runtime.mode=cluster"]
    if runtime_cfg.ray_address:
        found.append(f"runtime.ray_address={runtime_cfg.ray_address}")
    if runtime_cfg.storage:
        found.append(f"runtime.storage={runtime_cfg.storage}")
    return found


def role_bundles(cfg, kinds, cluster_gpus: float) -> dict[str, list[dict[str, float]]]:
    """Each role's members' Ray resources: CPUs, GPUs (learner ranks and generators: 1 each by default
    when the cluster has GPUs, else none) and custom resources from the config."""
    from rlft.runtime import collective_group_size, member_gpus, member_resources

    ranks = collective_group_size(cfg.runtime.mode, cfg.learner.count)
    tp = cfg.generator.tensor_parallel_size  # one bundle per generator, holding every worker's devices
    sizes = {
        "learner": (ranks, cfg.learner.cpus_per_rank, member_gpus(cfg.learner.gpus_per_rank, cluster_gpus),
                    cfg.learner.resources),
        "generator": (cfg.generator.count, cfg.generator.cpus_per_actor * tp,
                      member_gpus(cfg.generator.gpus_per_actor, cluster_gpus) * tp, cfg.generator.resources),
        "reward": (cfg.reward.count, cfg.reward.cpus_per_actor, 0.0, cfg.reward.resources),
        "environment": (cfg.environment.count, cfg.environment.cpus_per_actor, 0.0, cfg.environment.resources),
        "teacher": (cfg.teacher.count, cfg.teacher.cpus_per_actor,
                    member_gpus(cfg.teacher.gpus_per_actor, cluster_gpus), cfg.teacher.resources),
    }
    return {kind: [member_resources(cpus, gpus, extra)] * count
            for kind, (count, cpus, gpus, extra) in sizes.items() if kind in kinds}
