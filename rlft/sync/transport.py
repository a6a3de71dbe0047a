"""Collective weight transfer (`sync.transport: collective`): learner rank 0 broadcasts the merged
weights straight into every generator's engine workers, bucket by bucket, with no serialisation and
no object store on the way.

    learner rank 0 (rank 0) --broadcast, one flat byte buffer per bucket--> engine workers (ranks 1..N)

The group is one of their own: a ProcessGroup object built on its own TCPStore (served by learner
rank 0 on a port of its own), never the default group, so DeepSpeed's group and vLLM's are left
alone. Its backend is the learners' (`learner.backend`: gloo on CPU, NCCL on GPU); the same code
runs both. vLLM 0.32 ships weight-transfer engines (`vllm/distributed/weight_transfer/`), but every
one is CUDA-only (PyNccl communicators, CUDA streams, CUDA IPC handles), so rlft builds the same
shape (trainer = rank 0, workers receive named tensors in buckets and reload them in place) on a
torch process group that gloo serves on CPU.

A bucket is whole decoder layers (rlft.sync.payload.bucket_names, `sync.bucket_mb`), laid out as
(name, dtype, shape, offset) slots of the one buffer each worker receives it into. The payload handed to the generators is only that
layout (`DenseBroadcast`); the fingerprint is the dense payload's (a digest of the buckets'
fingerprints), computed by the learner from the buffer it sends and by each worker from the buffer
it received, so the protocol checks it exactly as it checks an object-store payload.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from rlft.sync.payload import Payload, bucket_names, combine_fingerprints, fingerprint

ALIGN = 64  # slot offsets: every dtype's view of the byte buffer starts aligned
GROUP_PREFIX = "rlft-weights"
LOOPBACK = ("127.0.0.1", "localhost")

# One slot of a bucket: (name, dtype name, shape, byte offset). Plain lists and strings: the layout
# crosses vLLM's msgpack RPC to its workers.
Slot = tuple[str, str, list[int], int]


# ----------------------------------------------------------------- layout: pure functions
def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def bucket_layout(tensors: dict[str, torch.Tensor], names: list[str]) -> tuple[list[Slot], int]:
    """The slots of `names` in one byte buffer, in order, and the buffer's size."""
    slots, offset = [], 0
    for name in names:
        t = tensors[name]
        slots.append((name, str(t.dtype).removeprefix("torch."), list(t.shape), offset))
        offset = _aligned(offset + t.numel() * t.element_size())
    return slots, offset


def layouts(tensors: dict[str, torch.Tensor], bucket_bytes: int | None) -> list[tuple[list[Slot], int]]:
    """Each bucket's (slots, size): whole decoder layers of about `bucket_bytes` (None: one bucket)."""
    return [bucket_layout(tensors, names) for names in bucket_names(tensors, bucket_bytes)]


def views(buffer: torch.Tensor, slots: list[Slot]) -> dict[str, torch.Tensor]:
    """The tensors of a bucket as views into its byte buffer (no copy)."""
    out = {}
    for name, dtype_name, shape, offset in slots:
        dtype = getattr(torch, dtype_name)
        out[name] = buffer[offset : offset + torch.Size(shape).numel() * dtype.itemsize].view(dtype).view(*shape)
    return out


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's memory as a flat uint8 tensor (the same storage: what goes on the wire)."""
    return tensor.reshape(-1).view(torch.uint8)


# ----------------------------------------------------------------- the group
def group_device(addr: str):
    """Gloo's network device: loopback when the group meets on one machine, else the default one
    (the host name's address, or GLOO_SOCKET_IFNAME, as torch's own gloo groups)."""
    import torch.distributed as dist

    if addr in LOOPBACK:
        return dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")
    return dist.ProcessGroupGloo.create_default_device()


def open_group(backend: str, store, addr: str, rank: int, world_size: int, timeout_s: float):
    """A process group of `world_size` ranks on `store`, apart from torch's default group. Blocks until
    every rank has joined."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.PrefixStore(GROUP_PREFIX, store)
    if backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [group_device(addr)]
        return dist.ProcessGroupGloo(store, rank, world_size, options)
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, options)
    raise ValueError(f"weight group backend {backend!r}: expected gloo or nccl")


def serve_store(addr: str, world_size: int, timeout_s: float, port: int = 0):
    """Rank 0's key-value store on `port` of `addr` (0: a free one), bound to that address only (torch's
    own server would listen on every interface): (store, port). The weight group's, and the learner
    ranks' rendezvous (rlft.roles.learner)."""
    import socket

    import torch.distributed as dist

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, port))
    sock.listen(128)
    port = sock.getsockname()[1]
    # not waiting for the others here: they join the group, and the group's set-up waits for them
    store = dist.TCPStore(addr, port, world_size, True, datetime.timedelta(seconds=timeout_s),
                          wait_for_workers=False, master_listen_fd=sock.fileno(), use_libuv=False)
    # The store's daemon owns the socket from now on: were Python to close it (when `sock` is collected),
    # the daemon would abort the process.
    sock.detach()
    return store, port


def connect_store(addr: str, port: int, world_size: int, timeout_s: float):
    import torch.distributed as dist

    return dist.TCPStore(addr, port, world_size, False, datetime.timedelta(seconds=timeout_s))


def broadcast(group, tensor: torch.Tensor):
    """Start broadcasting one tensor's bytes from rank 0 (sending on rank 0, receiving into it elsewhere);
    the work to wait on."""
    import torch.distributed as dist

    options = dist.BroadcastOptions()
    options.rootRank = 0
    return group.broadcast([as_bytes(tensor)], options)


# ----------------------------------------------------------------- both ends of a transfer
# On the wire a bucket is its tensors, one broadcast each, in slot order: the learner sends the merged
# tensors where they are (no copy into a bucket buffer: ~270 fewer copies per SmolLM2 sync, which on a
# busy CPU each wait for a free core), each worker receives them straight into its bucket's buffer.
def send_buckets(group, tensors: dict[str, torch.Tensor], bucket_layouts: list) -> list[str]:
    """Learner rank 0: broadcast every bucket in order (`tensors` consumed, a bucket's merged copies freed
    once sent); each bucket's fingerprint, hashed while it travels."""
    found, sending = [], None
    for slots, _ in bucket_layouts:
        bucket = {name: tensors.pop(name).detach().contiguous() for name, *_ in slots}
        works = [broadcast(group, bucket[name]) for name, *_ in slots]
        found.append(fingerprint(bucket))
        if sending is not None:
            for work in sending:
                work.wait()
        sending = works
    for work in sending or ():
        work.wait()
    return found


def receive_buckets(group, bucket_layouts: list, device, load: Callable[[dict[str, torch.Tensor]], None]) -> str:
    """An engine worker: receive every bucket in order into a buffer of its own, the next one landing while
    this one is fingerprinted and loaded; the fingerprint of everything received."""
    def start(index):
        slots, size = bucket_layouts[index]
        tensors = views(torch.empty(size, dtype=torch.uint8, device=device), slots)
        return tensors, [broadcast(group, t) for t in tensors.values()]

    found, pending = [], start(0) if bucket_layouts else None
    for index in range(len(bucket_layouts)):
        tensors, works = pending
        for work in works:
            work.wait()
        pending = start(index + 1) if index + 1 < len(bucket_layouts) else None
        found.append(fingerprint(tensors))
        load(tensors)
        del tensors
    return combine_fingerprints(found)


# ----------------------------------------------------------------- the payload generators get
@dataclass(frozen=True)
class DenseBroadcast(Payload):
    """A dense payload that travels by broadcast: the generators get only its bucket layouts, the
    weights arrive over the weight group. Its `fingerprint` is known once sent (the learner's
    `last_export`). Not in PAYLOAD_KINDS: it is the `dense` kind sent another way."""

    kind: ClassVar[str] = "dense"
    buckets: tuple = ()   # each bucket's (slots, size)

    @property
    def num_bytes(self) -> int:
        return sum(size for _, size in self.buckets)

    def emptied(self) -> "DenseBroadcast":
        return dataclasses.replace(self, buckets=())

    def apply(self, engine, previous) -> str:
        seen = engine.collective_rpc("rlft_receive_dense", args=([[list(s) for s in slots] + [size]
                                                                    for slots, size in self.buckets],))
        if len(set(seen)) != 1:
            raise RuntimeError(f"engine workers received different weights: {seen}")
        engine.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        return seen[0]


def decode_buckets(wire: list) -> list[tuple[list[Slot], int]]:
    """DenseBroadcast.apply's wire form (each bucket: its slots, then its size) back to (slots, size)."""
    return [([(s[0], s[1], list(s[2]), int(s[3])) for s in bucket[:-1]], int(bucket[-1])) for bucket in wire]


# ----------------------------------------------------------------- learner rank 0's side
class WeightSender:
    """Learner rank 0's end of the weight group: opens it, and sends each export in a thread of its own,
    so that the export call returns the layouts at once and the generators start receiving."""

    def __init__(self, backend: str, addr: str, timeout_s: float):
        self.backend, self.addr, self.timeout_s = backend, addr, timeout_s
        self.group = None
        self._thread: threading.Thread | None = None
        self._result: dict = {}

    def open(self, world_size: int) -> int:
        """Serve the group's store and wait for the other ranks in a thread; the store's port."""
        store, port = serve_store(self.addr, world_size, self.timeout_s)
        self._run(lambda: setattr(self, "group", open_group(self.backend, store, self.addr, 0, world_size,
                                                            self.timeout_s)))
        return port

    def start(self, version: int, tensors: dict[str, torch.Tensor], bucket_bytes: int | None) -> DenseBroadcast:
        """Lay out `tensors` (consumed) in buckets and start sending them; the payload the generators get."""
        self.finish()  # the group is open, and no earlier send is still going
        bucket_layouts = layouts(tensors, bucket_bytes)
        self._run(lambda: send_buckets(self.group, tensors, bucket_layouts))
        return DenseBroadcast(version=version, tensors=b"", fingerprint="", buckets=tuple(bucket_layouts))

    def finish(self):
        """Wait for what runs in the thread (the group's opening, or a send); its result, or its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        result, self._result = self._result, {}
        if "error" in result:
            raise result["error"]
        return result.get("value")

    def _run(self, fn) -> None:
        def target():
            try:
                self._result = {"value": fn()}
            except BaseException as err:  # handed to finish(), in the caller's thread
                self._result = {"error": err}

        self._thread = threading.Thread(target=target, name="rlft-weight-sender", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.group = None


# ----------------------------------------------------------------- the controller's side
def connect(learners, generators, timeout_s: float) -> dict:
    """Form the weight group: learner rank 0 and every engine worker of every generator (role groups,
    rlft.runtime.RoleGroup). Every member starts joining in the background, then all are waited for,
    so members called one after another (inline mode) do not wait on each other."""
    workers = generators.call("engine_workers")
    world_size = 1 + sum(workers)
    where = learners.call_one(0, "open_weight_group", world_size, timeout_s)
    firsts = [1 + sum(workers[:i]) for i in range(len(workers))]
    generators.call_each("join_weight_group", [(where["addr"], where["port"], first, world_size, where["backend"],
                                                timeout_s) for first in firsts])
    generators.call("weight_group_ready")
    learners.call_one(0, "weight_group_ready")
    return {**where, "world_size": world_size}
