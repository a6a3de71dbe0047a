"""Role creation for the run modes (docs/design.md#run-modes).

Roles are plain classes. `RoleGroup.create` instantiates N of them either directly (inline
mode: one process, breakpoints work) or as Ray actors (local / cluster mode), and gives one
calling convention for both. What a mode means for other code (one process, Ray actors, one
machine) is answered by rlft.run_modes; nothing compares mode names.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from pathlib import Path
from typing import Any, Sequence

from rlft import run_modes
from rlft.logs import member_log_path, route_member_output, route_ray_driver_logs
from rlft.processes import guard_process_tree

log = logging.getLogger(__name__)

def start(mode: str, *, address: str | None = None, num_cpus: int | None = None, log_level: str = "info") -> bool:
    """Connect to (or start) Ray for the remote modes; inline mode needs nothing. True when this call
    connected: the caller then owns the connection and `stop`s it; a Ray this process had already
    connected to (a notebook's, a test module's shared one) is used as it is and left running.
    `log_level` (runtime.log_level): quiet sends Ray's own driver lines where other libraries' go
    (rlft.logs); the role members' output still reaches the driver (log_to_driver), which is what
    they pass on to the console once `RoleGroup.create` routed the rest to their log files."""
    if not run_modes.uses_ray(mode):
        return False
    import ray

    if ray.is_initialized():
        return False
    route_ray_driver_logs(log_level)
    if mode == "cluster":
        # "auto": $RAY_ADDRESS (a `ray job submit` job has it), else the cluster started on this node.
        ray.init(address=address or "auto", log_to_driver=True)
        return True
    else:
        # Ray's own services listen on every interface whatever node IP they get (README "Run on a
        # cluster"); token authentication, on by default for a Ray started here, guards them.
        # address="local": always a Ray of its own, even when a cluster already runs on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    return True


def stop(mode: str) -> None:
    if run_modes.uses_ray(mode):
        import ray

        if ray.is_initialized():
            ray.shutdown()


def collective_group_size(mode: str, requested: int) -> int:
    """Ranks that can run a collective group in this mode: one process holds only one rank."""
    if run_modes.one_process(mode) and requested > 1:
        log.info("inline mode runs one learner rank that processes every shard (requested %d)", requested)
        return 1
    return requested


# Rendezvous ports are drawn below the kernel's ephemeral range (Linux: 32768-60999), from which every
# outgoing connection takes its local port, and above Ray's worker ports (10002-19999): a port found free
# here is not taken by some process's connection between this check and rank 0's bind.
RENDEZVOUS_PORTS = range(20000, 32768)


def free_port(host: str = "127.0.0.1") -> int:
    """A port of `host` free now, for a listener that binds it later (a rendezvous)."""
    draw = random.SystemRandom()
    for _ in range(200):
        port = draw.randrange(RENDEZVOUS_PORTS.start, RENDEZVOUS_PORTS.stop)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # that range is full: the kernel's pick
        sock.bind((host, 0))
        return sock.getsockname()[1]


def member_gpus(requested: float | None, cluster_gpus: float) -> float:
    """GPUs one learner rank or generator reserves: as configured, else (None) 1 when the cluster has
    GPUs and 0 when it has none. Explicit fractions let several members share one GPU."""
    if requested is not None:
        return float(requested)
    return 1.0 if cluster_gpus > 0 else 0.0


def cluster_gpus(mode: str) -> float:
    """GPUs of the Ray cluster (all nodes); inline mode reserves nothing, so 0."""
    if not run_modes.uses_ray(mode):
        return 0.0
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def member_resources(num_cpus: float, num_gpus: float, extra: dict[str, float] | None) -> dict[str, float]:
    """One member's Ray resources as a bundle: CPU, GPU (when any) and custom resources."""
    return {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {}), **(extra or {})}


def check_fits(demands: dict[str, list[dict[str, float]]], total: dict[str, float]) -> None:
    """Raise when the roles together need more of a resource than the whole cluster has (they would
    wait forever); `demands` maps a role kind to its members' bundles."""
    needed: dict[str, float] = {}
    for bundles in demands.values():
        for bundle in bundles:
            for key, value in bundle.items():
                needed[key] = needed.get(key, 0.0) + value
    short = {k: (v, total.get(k, 0.0)) for k, v in needed.items() if v > total.get(k, 0.0) + 1e-9}
    if short:
        detail = ", ".join(f"{k}: {need:g} needed, {have:g} in the cluster" for k, (need, have) in sorted(short.items()))
        raise RuntimeError(
            f"the roles need more than the Ray cluster has ({detail}); lower learner.count / generator.count, or set "
            "fractions (learner.gpus_per_rank, generator.gpus_per_actor, *.cpus_per_*) so members share devices"
        )


def learner_placement_group(bundles: list[dict[str, float]], strategy: str, timeout_s: float):
    """A placement group with one bundle per learner rank, ready, or an error that says what is missing."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group(bundles, strategy=strategy, name=f"rlft-learners-{os.getpid()}-{id(bundles)}")
    if not group.wait(timeout_seconds=timeout_s):
        remove_placement_group(group)
        raise RuntimeError(
            f"the learner ranks' placement group ({len(bundles)} x {bundles[0]}, strategy {strategy}) was not ready "
            f"after {timeout_s:g} s; available: {ray.available_resources()}. Lower learner.count or its resources, "
            "or pick learner.placement=PACK/SPREAD (the STRICT_ ones need one node / one node per rank)"
        )
    return group


def _rendezvous_probe(host: str | None) -> tuple[str, int, str]:
    import ray

    host = host or ray.util.get_node_ip_address()
    return host, free_port(host), ray.get_runtime_context().get_node_id()


def rendezvous(mode: str, placement=None) -> dict[str, Any]:
    """Address and port of the learners' rendezvous, on the node of learner rank 0 (bundle 0 of the
    placement group). Local and inline modes: 127.0.0.1, so the ranks connect over loopback."""
    if not run_modes.uses_ray(mode) or placement is None:
        return {"addr": "127.0.0.1", "port": free_port(), "node_id": None}
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    probe = ray.remote(num_cpus=0)(_rendezvous_probe).options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement, placement_group_bundle_index=0))
    addr, port, node_id = ray.get(probe.remote("127.0.0.1" if run_modes.on_this_machine(mode) else None))
    return {"addr": addr, "port": port, "node_id": node_id}


def _where_am_i(_actor: Any = None) -> dict[str, Any]:
    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


# The concurrency group of calls that run beside a member's other calls (RoleGroup.call_beside).
BESIDE = "beside"


class RoleGroup:
    """N instances of one role; methods are called on all of them concurrently."""

    def __init__(self, name: str, members: list[Any], remote: bool):
        self.name = name
        self.members = members
        self.remote = remote

    @classmethod
    def create(
        cls,
        role_cls: type,
        mode: str,
        kwargs_per_member: Sequence[dict[str, Any]],
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        resources: dict[str, float] | None = None,
        placement=None,
        name: str | None = None,
        log_dir: Path | None = None,
        log_level: str = "quiet",
        beside: bool = False,
    ) -> "RoleGroup":
        """Member i is role_cls(**kwargs_per_member[i]): an object (inline) or a Ray actor, which with a
        placement group runs in its bundle i (the group is removed with the members). With `log_dir`
        (remote modes), each actor writes its stdout and stderr to <log_dir>/<name>-<i>.log
        (rlft.logs.route_member_output, at `log_level`), a replacement appending to the same file. With
        `beside`, each actor gets a second thread for calls that run beside its others (`call_beside`)."""
        name = name or role_cls.__name__
        if run_modes.one_process(mode):
            return cls(name, [role_cls(**kwargs) for kwargs in kwargs_per_member], remote=False)
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        # with `beside`, the default group keeps one thread (calls in order) and BESIDE has one more
        actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None,
                               **({"concurrency_groups": {BESIDE: 1}} if beside else {}))(role_cls)
        incarnation = iter(range(1 << 30))

        def spawn(i: int):
            options: dict[str, Any] = {"name": f"{name}-{i}-{id(kwargs_per_member)}-{next(incarnation)}"}
            if placement is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement, placement_group_bundle_index=i)
            member = actor_cls.options(**options).remote(**kwargs_per_member[i])
            if logs is not None:  # before anything else the member runs (an actor's calls run in order)
                member.__ray_call__.remote(route_member_output, str(logs[i]), log_level)
            # Runs before any other call but the one above: the processes the member starts
            # (vLLM's engine core and workers) end with it, however it dies (rlft.processes).
            member.__ray_call__.remote(guard_process_tree)
            return member

        logs = None if log_dir is None else [member_log_path(log_dir, name, i) for i in range(len(kwargs_per_member))]
        group = cls(name, [spawn(i) for i in range(len(kwargs_per_member))], remote=True)
        group.placement, group._spawn, group.logs = placement, spawn, logs
        return group

    placement = None  # the Ray placement group the members run in, if any
    timeout_s: float | None = None  # how long a call may take before it is an error (remote modes)
    stacks: list | None = None  # rlft.faults: each member's stack-dump file, and its (node id, pid)
    processes: list | None = None
    logs: list | None = None  # rlft.logs: each member's log file (remote modes, runtime.log_level quiet)
    _spawn = None
    # Whether reading member 0's state is a collective call of every member (learner ranks at ZeRO-3 hold a
    # slice of each weight each: a read gathers them); `call_lead` and `submit_lead` follow it.
    collective_reads = False

    def dead_members(self) -> list[int]:
        """Members whose actor process has died (remote modes; inline members cannot die alone)."""
        if not self.remote:
            return []
        import ray

        dead = []
        for i, member in enumerate(self.members):
            try:
                ray.get(member.__ray_ready__.remote(), timeout=60)
            except ray.exceptions.RayActorError:
                dead.append(i)
        return dead

    def restart(self, index: int) -> Any:
        """Replace member `index` by a new actor built from the same arguments (in the same placement
        bundle) and set it up; returns what its `setup` returned."""
        import ray

        ray.kill(self.members[index], no_restart=True)
        self.members[index] = self._spawn(index)
        return self.call_one(index, "setup")

    def where(self) -> list[dict[str, Any]]:
        """Per member: the Ray node id and IP it runs on, its pid and GPU ids (inline: this process)."""
        if not self.remote:
            return [{"node_id": None, "node_ip": "127.0.0.1", "pid": os.getpid(), "gpu_ids": []} for _ in self.members]
        import ray

        # __ray_call__ runs a function inside the actor, so role classes need no method for this.
        return ray.get([m.__ray_call__.remote(_where_am_i) for m in self.members])

    def share(self, value: Any) -> Any:
        """Place a value once where every member can fetch it (Ray object store; inline: as is)."""
        if not self.remote:
            return value
        import ray

        return ray.put(value)

    def __len__(self) -> int:
        return len(self.members)

    def _gather(self, pending: list[Any], method: str = "") -> list[Any]:
        if not self.remote:
            return pending
        import ray

        try:
            return ray.get(pending, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            from rlft.faults import RoleTimeout, dump_stacks

            dumps = dump_stacks(self)
            raise RoleTimeout(
                f"{self.name}.{method or 'call'} did not return within {self.timeout_s:g} s (runtime.call_timeout_s); "
                + (f"the stacks of its members are in {', '.join(map(str, dumps))}" if dumps else "no stack dumps")
                + (f"; their output is in {Path(self.logs[0]).parent}/{self.name}-<i>.log" if self.logs else "")
            ) from None

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Same arguments to every member; returns their results in member order."""
        return self.call_each(method, [args] * len(self.members), kwargs)

    def call_each(self, method: str, args_per_member: Sequence[tuple], kwargs: dict | None = None) -> list[Any]:
        """Member i gets args_per_member[i]; all run concurrently in the remote modes."""
        if len(args_per_member) != len(self.members):
            raise ValueError(f"{self.name}: {len(args_per_member)} argument sets for {len(self.members)} members")
        kwargs = kwargs or {}
        if not self.remote:
            return [getattr(m, method)(*a, **kwargs) for m, a in zip(self.members, args_per_member)]
        return self._gather([getattr(m, method).remote(*a, **kwargs) for m, a in zip(self.members, args_per_member)], method)

    def call_beside(self, method: str, *args: Any) -> list[Any]:
        """`call`, while the members may be running a long call (a generator sampling): remote members run it
        in their BESIDE concurrency group (the group must have been created with `beside=True`), inline
        members in the caller's thread. The member's method must be safe beside its others."""
        if not self.remote:
            return [getattr(m, method)(*args) for m in self.members]
        return self._gather([getattr(m, method).options(concurrency_group=BESIDE).remote(*args) for m in self.members],
                            method)

    def call_one(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        member = self.members[index]
        if not self.remote:
            return getattr(member, method)(*args, **kwargs)
        return self._gather([getattr(member, method).remote(*args, **kwargs)], method)[0]

    def call_lead(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Member 0's result of a call that reads its state; every member makes the call when the
        group's reads are collective (`collective_reads`)."""
        if not self.collective_reads:
            return self.call_one(0, method, *args, **kwargs)
        return self.call(method, *args, **kwargs)[0]

    def submit_lead(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`call_lead` without waiting (a handle, as `submit_one` gives). The other members' calls run
        on: an actor runs its calls in order, so a later call to them waits for these."""
        if not self.collective_reads:
            return self.submit_one(0, method, *args, **kwargs)
        return [self.submit_one(i, method, *args, **kwargs) for i in range(len(self.members))][0]

    def submit_one(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """Start a call on one member without waiting for it. The handle can be an argument of another
        group's `call` (remote: Ray hands the result over without the driver fetching it first) and
        `result(handle)` resolves it. Inline, the call runs now and the handle is its result."""
        member = self.members[index]
        if not self.remote:
            return getattr(member, method)(*args, **kwargs)
        return getattr(member, method).remote(*args, **kwargs)

    def result(self, handle: Any) -> Any:
        return self._gather([handle])[0]

    def shutdown(self) -> None:
        if self.remote:
            import ray

            for member in self.members:
                ray.kill(member)
            if self.placement is not None:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self.placement)
                self.placement = None
        self.members = []
