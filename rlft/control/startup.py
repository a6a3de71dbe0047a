"""Starting the roles (the controller's set-up, learners first): Ray resources per member, the
learners' placement group and rendezvous, the engine arguments of each generator, and a record of
where every member runs (placement.json).

`RoleStarter` holds what starting any role needs (the config, the algorithm's spec, the PEFT
method, the base model, the run folder) and what starting the learners found (their rendezvous
and rank 0's report, which says the device the others follow). `STARTERS` maps each role kind to
the function that starts its group; the set-up calls them learners first, then the kinds of
`spec.roles` in their order. The memory check and the CPU count run before Ray starts, from the
config alone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from rlft import run_modes, runtime
from rlft.cluster import role_bundles
from rlft.control.warm_start import teacher_model_path
from rlft.data.models import resolve_dtype
from rlft.errors import RunError
from rlft.faults import arm_stack_dumps, note_member_output
from rlft.footprint import GIB, ModelShape, RunDoesNotFit, check_fits, describe, estimate
from rlft.logs import LOGS_FOLDER, plan
from rlft.roles import ROLES
from rlft.roles.generator import engine_cpu_bind
from rlft.roles.learner import detect_device

log = logging.getLogger("rlft.controller")  # the controller's parts log as the controller


def member_threads(setting: int | str, cpus_per_member: float, mode: str, *, synchronous: bool, cores: int,
                   members: int) -> int | None:
    """torch threads of each member of a compute role (learner ranks, teachers); None: leave torch's default
    (inline mode shares the driver's). `setting` "auto" hands a local synchronous run's idle cores to the
    role's members: the engine is bound to all of them while it generates, and nothing else runs while
    they compute; otherwise each member gets the CPUs it reserves."""
    if run_modes.one_process(mode):
        return None
    if isinstance(setting, int):
        return setting
    if setting == "auto" and run_modes.on_this_machine(mode) and synchronous:
        return max(1, cores // members)
    return max(1, int(cpus_per_member))


def learner_threads(learner, mode: str, *, synchronous: bool, cores: int, ranks: int) -> int | None:
    """torch threads of each learner rank (learner.threads_per_rank, learner.cpus_per_rank)."""
    return member_threads(learner.threads_per_rank, learner.cpus_per_rank, mode, synchronous=synchronous,
                          cores=cores, members=ranks)


def required_cpus(cfg, spec) -> float:
    """CPUs the run's roles reserve in all (Ray is started with at least this many)."""
    sizes = {"learner": cfg.learner.count * cfg.learner.cpus_per_rank,
             "generator": cfg.generator.count * cfg.generator.cpus_per_actor * cfg.generator.tensor_parallel_size,
             "reward": cfg.reward.count * cfg.reward.cpus_per_actor,
             "environment": cfg.environment.count * cfg.environment.cpus_per_actor,
             "teacher": cfg.teacher.count * cfg.teacher.cpus_per_actor}
    for companion in spec.companions:  # learner groups of their own (a critic): ranks x their own cpus_per_rank
        learner = companion.run_config(cfg).learner
        sizes[companion.kind] = learner.count * learner.cpus_per_rank
    return sum(sizes[kind] for kind in ("learner", *spec.roles))


def learner_device(cfg, learner_info: dict[str, Any] | None = None) -> str:
    """The device learner rank 0 reported (in cluster mode the driver may have no GPU while the
    learners do); before the learners start, the one this process detects."""
    info = learner_info or {}
    return info.get("device") or detect_device(cfg.learner.device)


def memory_check(cfg, spec, peft, model_path, role_models: dict[str, Path] | None = None) -> list | None:
    """Local and inline modes on CPU: every role's estimated memory (rlft.footprint), refused when it
    exceeds what this machine offers (runtime.memory_check). None where it is not checked: in cluster
    mode each node has its own memory, and on GPU the weights live on the devices. Runs before any
    role starts, so the learners' device is the one this process detects."""
    if cfg.runtime.memory_check == "off" or not run_modes.on_this_machine(cfg.runtime.mode) or learner_device(cfg) != "cpu":
        return None
    found = estimate(cfg, spec, ModelShape.from_folder(model_path),
                     str(resolve_dtype(cfg.model.dtype, learner_device(cfg))), peft.payload_kind,
                     {kind: ModelShape.from_folder(path) for kind, path in (role_models or {}).items()})
    available, where = memory_budget(cfg)
    log.info("memory estimate (%.1f GiB offered): %s", available / GIB, describe(found))
    try:
        check_fits(found, available, where)
    except RunDoesNotFit as err:
        if cfg.runtime.memory_check == "refuse":
            raise RunError(str(err)) from None
        log.warning("%s", err)
    return found


class RoleStarter:
    """Starts the role groups of one run, once Ray runs (runtime.start); `STARTERS[kind](starter)`
    starts one kind. In cluster mode learners first: the generators follow the device learner rank 0
    reports. On this machine every group starts at once (`start_together`)."""

    def __init__(self, cfg, spec, peft, model_path: Path, run_dir: Path, role_models: dict[str, Path] | None = None):
        self.cfg, self.spec, self.peft, self.model_path, self.run_dir = cfg, spec, peft, model_path, run_dir
        self.role_models = role_models or {}  # models of roles other than the policy (`role_models`), by kind
        self.bundles: dict[str, list[dict[str, float]]] = {}  # Ray resources per member, by kind (remote modes)
        self.rendezvous: dict[str, Any] | None = None  # where the learner ranks meet
        self.learner_info: dict[str, Any] | None = None  # what learner rank 0 reported when it started
        self.companion_info: dict[str, dict[str, Any]] = {}  # what rank 0 of each companion group reported

    def placement_check(self) -> None:
        """Remote modes: fail now, not by waiting forever, when the roles need more than the cluster has."""
        if not run_modes.uses_ray(self.cfg.runtime.mode):
            return
        import ray

        gpus = runtime.cluster_gpus(self.cfg.runtime.mode)
        self.bundles = role_bundles(self.cfg, ("learner", *self.spec.roles), gpus)
        for companion in self.spec.companions:  # ranks like the learners', under the companion's own config
            self.bundles[companion.kind] = role_bundles(companion.run_config(self.cfg), ("learner",), gpus)["learner"]
        runtime.check_fits(self.bundles, ray.cluster_resources())
        log.info("role resources per member: %s", {kind: b[0] for kind, b in self.bundles.items()})

    def create(self, kind: str, kwargs_per_member: list[dict], placement=None,
               beside: bool = False) -> tuple[runtime.RoleGroup, list]:
        """The group of `kind` (its class from runtime.roles), set up: (group, each member's setup report)."""
        role_cls = ROLES[kind][getattr(self.cfg.runtime.roles, kind)]
        bundle = self.bundles[kind][0] if run_modes.uses_ray(self.cfg.runtime.mode) else {"CPU": 1.0}
        extra = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
        log_level = self.cfg.runtime.log_level
        group = runtime.RoleGroup.create(role_cls, self.cfg.runtime.mode, kwargs_per_member, num_cpus=bundle["CPU"],
                                         num_gpus=bundle.get("GPU", 0.0), resources=extra, placement=placement, name=kind,
                                         log_dir=self.run_dir / LOGS_FOLDER if plan(log_level).to_files else None,
                                         log_level=log_level, beside=beside)
        group.timeout_s = self.cfg.runtime.call_timeout_s
        try:
            arm_stack_dumps(group, self.run_dir / "stacks")
            info = group.call("setup")
        except Exception as err:  # the group is not the controller's yet: its members' output is named here
            note_member_output(err, {kind: group})
            raise
        log.info("%s group ready: %s", kind, info[0])
        return group, info

    def learner_device(self) -> str:
        """Learner rank 0's device once the learners started (see `learner_device`)."""
        return learner_device(self.cfg, self.learner_info)

    def dtype(self):
        """The weights dtype of learners and generators: model.dtype resolved on the learners' device."""
        return resolve_dtype(self.cfg.model.dtype, self.learner_device())

    def record_placement(self, roles: dict[str, runtime.RoleGroup]) -> None:
        """Where each role's members run and where the learners met: placement.json in the run folder."""
        found = {"mode": self.cfg.runtime.mode, "rendezvous": self.rendezvous,
                 **{kind: group.where() for kind, group in roles.items()}}
        (self.run_dir / "placement.json").write_text(json.dumps(found, indent=1))
        log.info("placement: %s", found)


# ----------------------------------------------------------------- one starter per role kind
def start_learners(starter: RoleStarter) -> runtime.RoleGroup:
    """Ranks in a placement group (learner.placement); the rendezvous is on rank 0's node."""
    group, info, starter.rendezvous = start_ranks(starter, "learner", starter.cfg, starter.spec)
    group.collective_reads = starter.cfg.learner.zero_stage == 3  # each rank holds a slice of every weight
    starter.learner_info = info[0]
    return group


def start_ranks(starter: RoleStarter, kind: str, cfg, spec) -> tuple[runtime.RoleGroup, list, dict[str, Any]]:
    """A group of learner ranks of role `kind` running `spec` under `cfg` (the learners, or a companion
    group with its own config): (group, each rank's setup report, its rendezvous)."""
    mode = cfg.runtime.mode
    ranks = runtime.collective_group_size(mode, cfg.learner.count)
    placement = None if not run_modes.uses_ray(mode) else runtime.learner_placement_group(
        starter.bundles[kind], cfg.learner.placement, cfg.runtime.placement_timeout_s)
    try:
        rendezvous = runtime.rendezvous(mode, placement)
        threads = learner_threads(cfg.learner, mode, synchronous=cfg.rollout.max_staleness == 0,
                                  cores=os.cpu_count() or 1, ranks=ranks)
        kwargs = [dict(cfg=cfg, spec=spec, rank=rank, world_size=ranks, model_path=str(starter.model_path),
                       master_addr=rendezvous["addr"], master_port=rendezvous["port"],
                       grad_accum=cfg.train.batch_size // (ranks * cfg.train.micro_batch_size),
                       num_threads=threads) for rank in range(ranks)]
        group, info = starter.create(kind, kwargs, placement)
    except BaseException:
        if placement is not None:  # the group owns it once created; before that, nobody does
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(placement)
        raise
    return group, info, rendezvous


def start_companion(starter: RoleStarter, kind: str) -> runtime.RoleGroup:
    """The algorithm's companion learner group of role `kind` (AlgorithmSpec.companions: a critic),
    started like the learners under the companion's run config and spec."""
    companion = starter.spec.companion(kind)
    group, info, _ = start_ranks(starter, kind, companion.run_config(starter.cfg), companion.spec)
    starter.companion_info[kind] = info[0]
    return group


def start_critics(starter: RoleStarter) -> runtime.RoleGroup:
    return start_companion(starter, "critic")


def start_generators(starter: RoleStarter) -> runtime.RoleGroup:
    cfg, gen = starter.cfg, starter.cfg.generator
    device = starter.learner_device()
    dtype = str(starter.dtype()).removeprefix("torch.")
    cores = os.cpu_count() or 1
    # Core binding splits this machine's cores; in cluster mode engines run on other machines.
    bind = device == "cpu" and gen.bind_cpus and run_modes.on_this_machine(cfg.runtime.mode)
    kwargs = [dict(cfg=cfg, index=i, model_path=str(starter.model_path), dtype=dtype, seed=cfg.run.seed + i,
                   lora_rank=starter.peft(cfg.peft).generator_lora_rank() if cfg.sync.weights == "adapter" else None,
                   cpu_bind=engine_cpu_bind(i, gen.count, cores, gen.tensor_parallel_size) if bind else None)
              for i in range(gen.count)]
    # in-flight updates: a weight load runs beside sampling (RoleGroup.call_beside)
    return starter.create("generator", kwargs, beside=cfg.rollout.in_flight_updates)[0]


def start_rewards(starter: RoleStarter) -> runtime.RoleGroup:
    kwargs = [dict(cfg=starter.cfg, index=i) for i in range(starter.cfg.reward.count)]
    return starter.create("reward", kwargs)[0]


def start_environments(starter: RoleStarter) -> runtime.RoleGroup:
    kwargs = [dict(cfg=starter.cfg, index=i) for i in range(starter.cfg.environment.count)]
    return starter.create("environment", kwargs)[0]


def start_teachers(starter: RoleStarter) -> runtime.RoleGroup:
    """Teachers on the learners' device and dtype; in a local synchronous run they score while every other
    role waits, so each gets the machine's cores divided among them."""
    cfg = starter.cfg
    threads = member_threads("auto", cfg.teacher.cpus_per_actor, cfg.runtime.mode,
                             synchronous=cfg.rollout.max_staleness == 0, cores=os.cpu_count() or 1,
                             members=cfg.teacher.count)
    kwargs = [dict(cfg=cfg, index=i, model_path=str(starter.role_models["teacher"]), device=starter.learner_device(),
                   dtype=str(starter.dtype()).removeprefix("torch."), num_threads=threads)
              for i in range(cfg.teacher.count)]
    return starter.create("teacher", kwargs)[0]


def start_together(starter: RoleStarter, kinds: tuple[str, ...]) -> dict[str, runtime.RoleGroup]:
    """Every group of `kinds` started at once, one thread each (local mode): a member's set-up is mostly
    its imports and its engine's start, so on a machine of several cores the groups' set-ups overlap
    instead of queueing (on 2 cores the learner's 7 s and the vLLM engine's 13 s of the tiny model's run).
    The generators and teachers then follow the learners' device as this machine detects it, which is
    the one the ranks detect on the same machine. If one group fails to start, the ones that started
    are shut down and the first error is raised."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(kinds), thread_name_prefix="rlft-start") as pool:
        pending = {kind: pool.submit(STARTERS[kind], starter) for kind in kinds}
    started, errors = {}, []
    for kind, future in pending.items():
        try:
            started[kind] = future.result()
        except BaseException as err:  # noqa: BLE001 - every thread's outcome is collected first
            errors.append(err)
    if errors:
        for group in started.values():
            group.shutdown()
        raise errors[0]
    return started


# Role kind -> the function that starts its group (a kind of spec.roles must have one).
STARTERS: dict[str, Callable[[RoleStarter], runtime.RoleGroup]] = {
    "learner": start_learners,
    "generator": start_generators,
    "reward": start_rewards,
    "environment": start_environments,
    "teacher": start_teachers,
    "critic": start_critics,
}

# Role kind -> where the model it loads comes from (kinds that load a model of their own), called as
# fn(cfg, train, show_progress) -> folder before any role starts.
ROLE_MODELS: dict[str, Callable[..., Path]] = {"teacher": teacher_model_path}


def role_models(cfg, spec, train=None, show_progress: bool = True) -> dict[str, Path]:
    """The models roles other than the policy's load, by kind (`ROLE_MODELS`), resolved before Ray starts:
    a recipe that makes one runs now, as a run of its own, like a warm start. Each must share the policy's
    tokenizer (`check_role_models`)."""
    return {kind: ROLE_MODELS[kind](cfg, train, show_progress) for kind in spec.roles if kind in ROLE_MODELS}


def check_role_models(models: dict[str, Path], tokenizer) -> None:
    """RunError when a role's model reads tokens differently from the policy (its vocabulary differs)."""
    from rlft.families import family_for

    for kind, path in models.items():
        theirs = family_for(path).load_tokenizer(path)
        if theirs.get_vocab() != tokenizer.get_vocab():
            raise RunError(f"the {kind} model {path} has another tokenizer than the policy ({len(theirs)} vs "
                           f"{len(tokenizer)} tokens): its log-probs would be of other tokens")


def memory_budget(cfg) -> tuple[float, str]:
    """(bytes the run may use, where they come from): runtime.memory_gb, else this machine's available
    memory less the 5% of its total that Ray's memory monitor keeps free (it kills a worker above 95%)."""
    if cfg.runtime.memory_gb is not None:
        return cfg.runtime.memory_gb * GIB, "runtime.memory_gb"
    import psutil

    memory = psutil.virtual_memory()
    reserve = 0.05 * memory.total if run_modes.uses_ray(cfg.runtime.mode) else 0.0
    return max(0.0, memory.available - reserve), "this machine (available memory less Ray's 5% margin)"
