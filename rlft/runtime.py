"""Role creation for the run modes (DESIGN section 2).

Roles are plain classes. `RoleGroup.create` instantiates N of them either directly (inline
mode: one process, breakpoints work) or as Ray actors (local / cluster mode), and gives one
calling convention for both. Nothing outside this module knows which mode it is in.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Sequence

log = logging.getLogger(__name__)

REMOTE_MODES = ("local", "cluster")


def start(mode: str, *, address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to (or start) Ray for the remote modes; inline mode needs nothing."""
    if mode not in ("inline", *REMOTE_MODES):
        raise ValueError(f"unknown runtime mode {mode!r}; expected inline, local or cluster")
    if mode == "inline":
        return
    import ray

    if ray.is_initialized():
        return
    if mode == "cluster":
        ray.init(address=address or "auto", log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)


def stop(mode: str) -> None:
    if mode in REMOTE_MODES:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def collective_group_size(mode: str, requested: int) -> int:
    """Ranks that can run a collective group in this mode: one process holds only one rank."""
    if mode == "inline" and requested > 1:
        log.info("inline mode runs one learner rank that processes every shard (requested %d)", requested)
        return 1
    return requested


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_address(mode: str) -> str:
    if mode == "inline":
        return "127.0.0.1"
    import ray

    return ray.util.get_node_ip_address()


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
        name: str | None = None,
    ) -> "RoleGroup":
        """Member i is role_cls(**kwargs_per_member[i]): an object (inline) or a Ray actor."""
        name = name or role_cls.__name__
        if mode == "inline":
            return cls(name, [role_cls(**kwargs) for kwargs in kwargs_per_member], remote=False)
        import ray

        actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(role_cls)
        members = [
            actor_cls.options(name=f"{name}-{i}-{id(kwargs_per_member)}").remote(**kwargs)
            for i, kwargs in enumerate(kwargs_per_member)
        ]
        return cls(name, members, remote=True)

    def share(self, value: Any) -> Any:
        """Place a value once where every member can fetch it (Ray object store; inline: as is)."""
        if not self.remote:
            return value
        import ray

        return ray.put(value)

    def __len__(self) -> int:
        return len(self.members)

    def _gather(self, pending: list[Any]) -> list[Any]:
        if not self.remote:
            return pending
        import ray

        return ray.get(pending)

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
        return self._gather([getattr(m, method).remote(*a, **kwargs) for m, a in zip(self.members, args_per_member)])

    def call_one(self, index: int, method: str, *args: Any, **kwargs: Any) -> Any:
        member = self.members[index]
        if not self.remote:
            return getattr(member, method)(*args, **kwargs)
        return self._gather([getattr(member, method).remote(*args, **kwargs)])[0]

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
        self.members = []
