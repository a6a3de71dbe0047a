"""Starting the roles (the controller's set-up calls these, learners first): Ray resources per
member, the learners' placement group and rendezvous, the engine arguments of each generator,
and a record of where every member runs (placement.json)."""

from __future__ import annotations

import json
import logging
import os

from rlft import runtime
from rlft.cluster import role_bundles
from rlft.data.models import resolve_dtype
from rlft.errors import RunError
from rlft.faults import arm_stack_dumps
from rlft.footprint import GIB, ModelShape, RunDoesNotFit, check_fits, describe, estimate
from rlft.roles import ROLES
from rlft.roles.generator import engine_cpu_bind
from rlft.roles.learner import detect_device

log = logging.getLogger("rlft.controller")


def learner_threads(learner, mode: str, *, synchronous: bool, cores: int, ranks: int) -> int | None:
    """torch threads of each learner rank (None: leave torch's default, inline mode shares the driver's).
    `auto` hands a local synchronous run's idle cores to the learners: the engine is bound to all of them
    while it generates, and nothing else runs while the ranks train."""
    if mode == "inline":
        return None
    if isinstance(learner.threads_per_rank, int):
        return learner.threads_per_rank
    if learner.threads_per_rank == "auto" and mode == "local" and synchronous:
        return max(1, cores // ranks)
    return max(1, int(learner.cpus_per_rank))


class RoleStartup:
    """Mixed into the Controller: `self.cfg`, `self.spec`, `self.peft`, `self.model_path`,
    `self.run_dir` and `self.roles` are the controller's."""

    def required_cpus(self) -> float:
        cfg = self.cfg
        sizes = {"learner": cfg.learner.count * cfg.learner.cpus_per_rank,
                 "generator": cfg.generator.count * cfg.generator.cpus_per_actor,
                 "reward": cfg.reward.count * cfg.reward.cpus_per_actor,
                 "environment": cfg.environment.count * cfg.environment.cpus_per_actor}
        return sum(sizes[kind] for kind in ("learner", *self.spec.roles))

    def placement_check(self) -> None:
        """Remote modes: fail now, not by waiting forever, when the roles need more than the cluster has."""
        if self.cfg.runtime.mode == "inline":
            return
        import ray

        self.bundles = role_bundles(self.cfg, ("learner", *self.spec.roles), runtime.cluster_gpus(self.cfg.runtime.mode))
        runtime.check_fits(self.bundles, ray.cluster_resources())
        log.info("role resources per member: %s", {kind: b[0] for kind, b in self.bundles.items()})

    def memory_check(self) -> list | None:
        """Local and inline modes on CPU: every role's estimated memory (rlft.footprint), refused when it
        exceeds what this machine offers (runtime.memory_check). None where it is not checked: in cluster
        mode each node has its own memory, and on GPU the weights live on the devices."""
        cfg = self.cfg
        if cfg.runtime.memory_check == "off" or cfg.runtime.mode == "cluster" or self.learner_device() != "cpu":
            return None
        found = estimate(cfg, self.spec, ModelShape.from_folder(self.model_path), str(self.dtype()),
                         self.peft.payload_kind)
        available, where = memory_budget(cfg)
        log.info("memory estimate (%.1f GiB offered): %s", available / GIB, describe(found))
        try:
            check_fits(found, available, where)
        except RunDoesNotFit as err:
            if cfg.runtime.memory_check == "refuse":
                raise RunError(str(err)) from None
            log.warning("%s", err)
        return found

    def record_placement(self) -> None:
        """Where each role's members run and where the learners met: placement.json in the run folder."""
        found = {"mode": self.cfg.runtime.mode, "rendezvous": self.rendezvous,
                 **{kind: group.where() for kind, group in self.roles.items()}}
        (self.run_dir / "placement.json").write_text(json.dumps(found, indent=1))
        log.info("placement: %s", found)

    def _create(self, kind: str, kwargs_per_member: list[dict], placement=None):
        role_cls = ROLES[kind][getattr(self.cfg.runtime.roles, kind)]
        bundle = self.bundles[kind][0] if self.cfg.runtime.mode != "inline" else {"CPU": 1.0}
        extra = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
        group = runtime.RoleGroup.create(role_cls, self.cfg.runtime.mode, kwargs_per_member, num_cpus=bundle["CPU"],
                                         num_gpus=bundle.get("GPU", 0.0), resources=extra, placement=placement, name=kind)
        group.timeout_s = self.cfg.runtime.call_timeout_s
        arm_stack_dumps(group, self.run_dir / "stacks")
        info = group.call("setup")
        log.info("%s group ready: %s", kind, info[0])
        return group, info

    def _start_learners(self) -> runtime.RoleGroup:
        """Ranks in a placement group (learner.placement); the rendezvous is on rank 0's node."""
        cfg, mode = self.cfg, self.cfg.runtime.mode
        ranks = runtime.collective_group_size(mode, cfg.learner.count)
        placement = None if mode == "inline" else runtime.learner_placement_group(
            self.bundles["learner"], cfg.learner.placement, cfg.runtime.placement_timeout_s)
        try:
            self.rendezvous = runtime.rendezvous(mode, placement)
            threads = learner_threads(cfg.learner, mode, synchronous=cfg.rollout.max_staleness == 0,
                                      cores=os.cpu_count() or 1, ranks=ranks)
            kwargs = [dict(cfg=cfg, spec=self.spec, rank=rank, world_size=ranks, model_path=str(self.model_path),
                           master_addr=self.rendezvous["addr"], master_port=self.rendezvous["port"],
                           grad_accum=cfg.train.batch_size // (ranks * cfg.train.micro_batch_size),
                           num_threads=threads) for rank in range(ranks)]
            group, info = self._create("learner", kwargs, placement)
        except BaseException:
            if placement is not None:  # the group owns it once created; before that, nobody does
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(placement)
            raise
        self.learner_info = info[0]
        return group

    def learner_device(self) -> str:
        """The device learner rank 0 reported (in cluster mode the driver may have no GPU while the
        learners do); before the learners start, the one this process detects."""
        info = getattr(self, "learner_info", None) or {}
        return info.get("device") or detect_device(self.cfg.learner.device)

    def dtype(self):
        """The weights dtype of learners and generators: model.dtype resolved on the learners' device."""
        return resolve_dtype(self.cfg.model.dtype, self.learner_device())

    def _start_generators(self) -> runtime.RoleGroup:
        cfg, gen = self.cfg, self.cfg.generator
        device = self.learner_device()
        dtype = str(self.dtype()).removeprefix("torch.")
        cores = os.cpu_count() or 1
        # Core binding splits this machine's cores; in cluster mode engines run on other machines.
        bind = device == "cpu" and gen.bind_cpus and cfg.runtime.mode != "cluster"
        kwargs = [dict(cfg=cfg, index=i, model_path=str(self.model_path), dtype=dtype, seed=cfg.run.seed + i,
                       lora_rank=self.peft(cfg.peft).generator_lora_rank() if cfg.sync.weights == "adapter" else None,
                       cpu_bind=engine_cpu_bind(i, gen.count, cores) if bind else None)
                  for i in range(gen.count)]
        return self._create("generator", kwargs)[0]

    def _start_rewards(self) -> runtime.RoleGroup:
        kwargs = [dict(cfg=self.cfg, index=i) for i in range(self.cfg.reward.count)]
        return self._create("reward", kwargs)[0]

    def _start_environments(self) -> runtime.RoleGroup:
        kwargs = [dict(cfg=self.cfg, index=i) for i in range(self.cfg.environment.count)]
        return self._create("environment", kwargs)[0]


def memory_budget(cfg) -> tuple[float, str]:
    """(bytes the run may use, where they come from): runtime.memory_gb, else this machine's available
    memory less the 5% of its total that Ray's memory monitor keeps free (it kills a worker above 95%)."""
    if cfg.runtime.memory_gb is not None:
        return cfg.runtime.memory_gb * GIB, "runtime.memory_gb"
    import psutil

    memory = psutil.virtual_memory()
    reserve = 0.05 * memory.total if cfg.runtime.mode != "inline" else 0.0
    return max(0.0, memory.available - reserve), "this machine (available memory less Ray's 5% margin)"
