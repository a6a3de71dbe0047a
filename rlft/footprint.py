"""The host memory a run will need, estimated before any role starts, and a refusal when it cannot fit.

A role's estimate is a sum of named parts, each tied to the setting that controls it, so that a run
that does not fit is refused with the role, the part and the setting to lower:

* the process itself with a negligible model (Python, torch, DeepSpeed or vLLM imported, Ray's
  worker): measured on CPU with the embedded tiny model (`perf/mem_<role>_rss_mb` of its runs);
* weights in the run's dtype (every learner rank and every vLLM worker holds the whole model);
* the learner's trained state: fp32 gradients, Adam's two moments and, in 16 bits, fp32 master
  weights, split over the ranks by ZeRO (stage 1: moments and master, stage 2: gradients too);
* the learner's activations for one micro-batch at train.max_length: per layer and token about
  10 hidden-size and 3 intermediate-size values kept for the backward pass, plus the logits over
  the vocabulary in float32 (logits, log-softmax and their gradient);
* the vLLM worker's KV cache (generator.kv_cache_mb) and the partial/sparse sync's copy of the
  checkpoint tensors it rewrites (rlft.sync.shadow);
* copies of a weight payload while a sync is under way (PAYLOAD_COPIES, measured). Dense and
  partial payloads travel in buckets (sync.bucket_mb, rlft.sync.payload): what vLLM's engine core
  and worker hold scales with a bucket, what the learner and the generator actor hold mostly with
  the payload. Adapter payloads are small and sent whole.

The estimate is an upper bound meant to catch a run that cannot fit (two SmolLM2 generators and two
learner ranks in float32 on a 24 GB machine), not an accounting: resident sizes count shared pages
once per process, and sequences are usually shorter than train.max_length.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from rlft import run_modes
from rlft.peft import PEFT_METHODS
from rlft.roles.generator import engine_in_actor

MIB = 2**20
GIB = 2**30

# Resident MiB of each process with a negligible model (tiny-model runs on CPU, rounded up).
BASELINE_MIB = {"driver": 500, "ray": 800, "learner": 700, "generator": 700, "engine_core": 650,
                "engine_worker": 1100, "generator_with_engine": 900, "diffusion_generator": 700, "reward": 400,
                "environment": 450}
# The peak each process adds while a sync is applied, as (whole payloads, buckets): merged tensors,
# serialised bytes, Ray's pickling and unpickling, each hop of vLLM's collective_rpc, the deserialised
# tensors and the reload's repacked weights. Fitted to bench/sync_memory.py (351 MB payload; whole /
# 64 MiB buckets: learner +2184 / +1867 MB, actor +1412 / +826, engine core +1055 / +177, worker
# +1114 / +329, the actor with the engine in it +1053) and rounded up.
PAYLOAD_COPIES = {"learner": (5, 2), "object_store": (1, 0), "generator": (2, 3), "engine_core": (0, 3),
                  "engine_worker": (0.5, 3)}
# Values kept per token and layer for the backward pass, in hidden-size and intermediate-size units.
HIDDEN_VALUES_PER_LAYER, INTERMEDIATE_VALUES_PER_LAYER = 10, 3
LOGIT_COPIES = 3  # logits, log-softmax and the gradient, all float32
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
TARGET_SHAPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RunDoesNotFit(ValueError):
    """The estimated memory of a run exceeds what the machine offers; the message names what to lower."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model: its parameter count and, for a transformer, its sizes."""

    params: int
    hidden: int | None = None
    layers: int | None = None
    intermediate: int | None = None
    vocab: int | None = None
    kv_hidden: int | None = None   # key/value heads x head size (grouped-query attention)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "ModelShape":
        """Sizes from config.json and the parameter count from the safetensors headers (no weights read)."""
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        params = sum(safetensors_numel(f) for f in sorted(folder.glob("*.safetensors")))
        hidden = config.get("hidden_size", config.get("hidden"))
        heads = config.get("num_attention_heads")
        head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
        kv_heads = config.get("num_key_value_heads", heads)
        return cls(params=params, hidden=hidden, layers=config.get("num_hidden_layers", config.get("blocks")),
                   intermediate=config.get("intermediate_size"), vocab=config.get("vocab_size", config.get("vocab")),
                   kv_hidden=kv_heads * head_dim if kv_heads and head_dim else None)

    def linear_sizes(self, module: str) -> tuple[int, int] | None:
        """(in, out) of one layer's linear `module` of a Llama-style block, None if unknown."""
        h, i, kv = self.hidden, self.intermediate, self.kv_hidden or self.hidden
        if h is None or i is None:
            return None
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}.get(module)

    def adapter_linear_sizes(self, modules) -> list[tuple[int, int]] | None:
        """(in, out) of each of `modules` that is a Llama-style projection (TARGET_SHAPES; others are
        skipped) in one layer; None when none is or their sizes or the layer count are unknown."""
        sizes = [self.linear_sizes(m) for m in modules if m in TARGET_SHAPES]
        if not sizes or None in sizes or self.layers is None:
            return None
        return sizes


def safetensors_numel(path: Path) -> int:
    """Number of values in a safetensors file, from its JSON header."""
    with open(path, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(size))
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            count = 1
            for dim in entry["shape"]:
                count *= dim
            total += count
    return total


@dataclass
class Process:
    """One process of a role: named parts in bytes, and the setting that controls each."""

    name: str
    parts: dict[str, float] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)

    def add(self, part: str, num_bytes: float, setting: str) -> None:
        if num_bytes > 0:
            self.parts[part] = self.parts.get(part, 0.0) + num_bytes
            self.settings[part] = setting

    @property
    def total(self) -> float:
        return sum(self.parts.values())


@dataclass
class RoleEstimate:
    """`count` members of a role, each made of these processes (a generator: actor, engine core, worker),
    or of less where `member_totals` lists each member's own total (learner rank 0 builds the payloads)."""

    kind: str
    count: int
    count_setting: str
    processes: list[Process]
    member_totals: list[float] | None = None

    @property
    def per_member(self) -> float:
        return sum(p.total for p in self.processes)

    @property
    def total(self) -> float:
        return sum(self.member_totals) if self.member_totals else self.count * self.per_member

    def largest_part(self) -> tuple[str, str, float]:
        """(process: part, setting, bytes) of the biggest part of one member that a setting controls."""
        return max(((f"{p.name}: {part}", p.settings[part], size) for p in self.processes
                    for part, size in p.parts.items() if p.settings[part] != "-"),
                   key=lambda found: found[2], default=("process", "-", 0.0))

    def as_dict(self) -> dict:
        return {"count": self.count, "per_member_mib": round(self.per_member / MIB),
                "processes": {p.name: {part: round(size / MIB) for part, size in p.parts.items()}
                              for p in self.processes}}


def trainable_params(cfg, shape: ModelShape) -> int:
    """Parameters the learner trains (with gradients and Adam moments): the PEFT method's own count."""
    return PEFT_METHODS[cfg.peft.method].trained_parameters(cfg.peft, shape)


def payload_bytes(cfg, shape: ModelShape, weight_bytes: int, payload_kind: str | None) -> tuple[float, float]:
    """(bytes of one weight payload, of one bucket of it) for the rlft.sync.payload kinds."""
    size = _payload_size(cfg, shape, weight_bytes, payload_kind)
    bucketed = cfg.sync.weights == "merged" or payload_kind in (None, "dense", "partial")
    return size, min(size, cfg.sync.bucket_mb * MIB) if bucketed and cfg.sync.bucket_mb else size


def _payload_size(cfg, shape: ModelShape, weight_bytes: int, payload_kind: str | None) -> float:
    if cfg.sync.weights == "merged" or payload_kind in (None, "dense"):
        return shape.params * weight_bytes
    if payload_kind == "partial":
        return shape.params * weight_bytes / 2
    if payload_kind == "sparse":
        return trainable_params(cfg, shape) * (weight_bytes + 4)  # values and positions
    return trainable_params(cfg, shape) * 4   # LoRA tensors in float32


def activation_bytes(cfg, shape: ModelShape, act_bytes: int) -> tuple[float, float]:
    """(hidden activations, logits) of one micro-batch at train.max_length."""
    tokens = cfg.train.micro_batch_size * cfg.train.max_length
    hidden = 0.0
    if shape.hidden and shape.layers:
        intermediate = shape.intermediate or 4 * shape.hidden
        per_token_layer = HIDDEN_VALUES_PER_LAYER * shape.hidden + INTERMEDIATE_VALUES_PER_LAYER * intermediate
        hidden = tokens * shape.layers * per_token_layer * act_bytes
    logits = tokens * (shape.vocab or 0) * 4 * LOGIT_COPIES
    return hidden, logits


def copies(process: str, payload: tuple[float, float]) -> float:
    whole, buckets = PAYLOAD_COPIES[process]
    return whole * payload[0] + buckets * payload[1]


def learner_process(cfg, shape: ModelShape, weight_bytes: int, payload: tuple[float, float], shipped: bool,
                    ranks: int) -> Process:
    proc = Process("rank")
    proc.add("process", BASELINE_MIB["learner"] * MIB, "-")
    stage = cfg.learner.zero_stage
    weights = shape.params * weight_bytes
    trained = trainable_params(cfg, shape)
    if stage == 3:  # each rank holds 1/ranks of every weight, gathers up to zero3_live_mb of them at a time and
        # reduces gradients through a bucket of that size (rlft.roles.zero3)
        live = cfg.learner.zero3_live_mb * MIB
        proc.add("weights", weights / ranks, "model.dtype or learner.zero_stage")
        proc.add("gathered weights", min(weights, live), "learner.zero3_live_mb")
        proc.add("reduce bucket", min(trained * weight_bytes, live), "learner.zero3_live_mb")
    else:
        proc.add("weights", weights, "model.dtype")
    master = 4 if weight_bytes < 4 else 0
    proc.add("gradients", trained * 4 / (ranks if stage >= 2 else 1), "peft.method or learner.zero_stage")
    proc.add("optimizer state", trained * (8 + master) / (ranks if stage >= 1 else 1),
             "peft.method or learner.zero_stage")
    hidden, logits = activation_bytes(cfg, shape, weight_bytes)
    proc.add("activations", hidden, "train.micro_batch_size or train.max_length")
    proc.add("logits", logits, "train.micro_batch_size or train.max_length")
    if shipped:  # rank 0 builds and serialises every payload
        proc.add("sync payload", copies("learner", payload), "sync.weights or sync.bucket_mb")
    return proc


def generator_processes(cfg, shape: ModelShape, weight_bytes: int, payload: tuple[float, float], payload_kind: str | None,
                        shared_process: bool) -> list[Process]:
    """A vLLM generator: the Ray actor, and vLLM's engine core and worker in it (generator.engine_processes) or
    in processes of their own; a diffusion generator: one process."""
    if cfg.runtime.roles.generator != "vllm":
        proc = Process("actor")
        proc.add("process", 0 if shared_process else BASELINE_MIB["diffusion_generator"] * MIB, "-")
        proc.add("weights", shape.params * weight_bytes, "model.dtype")
        proc.add("sync payload", payload[0] + payload[1], "sync.weights")
        return [proc]
    actor = Process("actor")
    tp = cfg.generator.tensor_parallel_size
    if engine_in_actor(cfg.generator.engine_processes, cfg.runtime.mode, cpu=True, tensor_parallel_size=tp):
        actor.add("process", BASELINE_MIB["generator_with_engine"] * MIB, "-")   # vLLM's engine runs in it
        actor.add("sync payload", copies("engine_worker", payload), "sync.weights or sync.bucket_mb")
        processes, workers = [actor], [actor]
    else:
        actor.add("process", 0 if shared_process else BASELINE_MIB["generator"] * MIB, "-")
        core = Process("engine core")
        core.add("process", BASELINE_MIB["engine_core"] * MIB, "-")
        core.add("sync payload", copies("engine_core", payload), "sync.weights or sync.bucket_mb")
        # one worker per tensor-parallel shard: each holds its shard and KV cache, and receives every payload whole
        workers = [Process("engine worker" if tp == 1 else f"engine worker {w}") for w in range(tp)]
        for worker in workers:
            worker.add("process", BASELINE_MIB["engine_worker"] * MIB, "-")
            worker.add("sync payload", copies("engine_worker", payload), "sync.weights or sync.bucket_mb")
        processes = [actor, core, *workers]
    for worker in workers:
        worker.add("weights", shape.params * weight_bytes / tp, "model.dtype")
        worker.add("KV cache", (cfg.generator.kv_cache_mb or 0) * MIB, "generator.kv_cache_mb")
        if cfg.sync.weights == "adapter" and payload_kind in ("partial", "sparse"):
            worker.add("checkpoint copy", shape.params * weight_bytes, "sync.weights")  # rlft.sync.shadow
    actor.add("sync payload", copies("generator", payload), "sync.weights or sync.bucket_mb")
    return processes


def teacher_process(cfg, shape: ModelShape, weight_bytes: int, inline: bool) -> Process:
    """A teacher: its weights and one forward pass (no gradient) of teacher.micro_batch_size rollouts."""
    proc = Process("actor")
    proc.add("process", 0 if inline else BASELINE_MIB["learner"] * MIB, "-")
    proc.add("weights", shape.params * weight_bytes, "model.dtype")
    tokens = cfg.teacher.micro_batch_size * cfg.train.max_length
    proc.add("logits", tokens * (shape.vocab or 0) * 4 * 2, "teacher.micro_batch_size")  # logits, log-softmax
    return proc


def estimate(cfg, spec, shape: ModelShape, dtype: str, payload_kind: str | None,
             role_shapes: dict[str, ModelShape] | None = None) -> list[RoleEstimate]:
    """Per-role host memory of a run in local or inline mode on CPU; `dtype` is the resolved weights dtype
    ("float32", "bfloat16", ...), `payload_kind` the PEFT method's (rlft.peft); `role_shapes`: the models
    of roles other than the policy's, by kind (a distillation teacher)."""
    weight_bytes = DTYPE_BYTES.get(dtype.removeprefix("torch."), 4)
    inline = run_modes.one_process(cfg.runtime.mode)
    generates = "generator" in spec.roles
    payload = payload_bytes(cfg, shape, weight_bytes, payload_kind) if generates else (0.0, 0.0)
    base = Process("driver")
    base.add("process", BASELINE_MIB["driver"] * MIB, "-")
    if not inline:
        base.add("ray", BASELINE_MIB["ray"] * MIB, "runtime.mode")
        base.add("object store: sync payload", copies("object_store", payload), "sync.weights")
    found = [RoleEstimate("controller", 1, "-", [base])]
    count = 1 if inline else cfg.learner.count   # inline mode runs one rank over every shard
    ranks = [learner_process(cfg, shape, weight_bytes, payload, generates and rank == 0, count) for rank in range(count)]
    if inline:  # every role shares the driver's process
        for rank in ranks:
            rank.parts.pop("process")
    found += [RoleEstimate("learner", 1, "learner.count", [rank]) for rank in ranks]
    found += [companion_ranks(cfg, companion, shape, weight_bytes, inline) for companion in spec.companions]
    if generates:
        found.append(RoleEstimate("generator", cfg.generator.count, "generator.count",
                                  generator_processes(cfg, shape, weight_bytes, payload, payload_kind, inline)))
    for kind in ("reward", "environment"):
        if kind in spec.roles and not inline:
            proc = Process("actor")
            proc.add("process", BASELINE_MIB[kind] * MIB, "-")
            found.append(RoleEstimate(kind, getattr(cfg, kind).count, f"{kind}.count", [proc]))
    if "teacher" in spec.roles and role_shapes and "teacher" in role_shapes:
        found.append(RoleEstimate("teacher", cfg.teacher.count, "teacher.count",
                                  [teacher_process(cfg, role_shapes["teacher"], weight_bytes, inline)]))
    return merge_ranks(found)


def companion_ranks(cfg, companion, shape: ModelShape, weight_bytes: int, inline: bool) -> RoleEstimate:
    """An algorithm's companion learner group (a critic, AlgorithmSpec.companions): ranks like the learners'
    under its own run config (its PEFT method's trained state), with a scalar head instead of the
    vocabulary's logits and no sync payload."""
    derived = companion.run_config(cfg)
    count = 1 if inline else derived.learner.count
    rank = learner_process(derived, shape, weight_bytes, (0.0, 0.0), False, count)
    rank.parts.pop("logits", None)
    if inline:
        rank.parts.pop("process")
    return RoleEstimate(companion.kind, count, companion.count_setting, [rank])


def merge_ranks(found: list[RoleEstimate]) -> list[RoleEstimate]:
    """Learner ranks as one role entry: shown by the largest rank (rank 0 ships the payloads), summed rank by rank."""
    ranks = [r for r in found if r.kind == "learner"]
    if not ranks:
        return found
    largest = max(ranks, key=lambda r: r.per_member)
    merged = RoleEstimate("learner", len(ranks), "learner.count", largest.processes,
                          member_totals=[r.per_member for r in ranks])
    others = [r for r in found if r.kind != "learner"]
    return others[:1] + [merged] + others[1:]


def total_bytes(found: list[RoleEstimate]) -> float:
    return sum(role.total for role in found)


def describe(found: list[RoleEstimate]) -> str:
    """One line per role: members x GiB each, the biggest parts."""
    lines = []
    for role in found:
        parts = sorted(((f"{p.name} {part}" if len(role.processes) > 1 else part, size)
                        for p in role.processes for part, size in p.parts.items()), key=lambda x: -x[1])
        shown = ", ".join(f"{name} {size / GIB:.2f}" for name, size in parts[:4])
        each = ("up to " if role.member_totals else "") + f"{role.per_member / GIB:.2f} GiB"
        lines.append(f"{role.kind}: {role.count} x {each} ({shown})")
    return "; ".join(lines)


def check_fits(found: list[RoleEstimate], available: float, where: str) -> None:
    """RunDoesNotFit naming the role that needs the most, its largest part and the settings to lower."""
    needed = total_bytes(found)
    if needed <= available:
        return
    role = max(found, key=lambda r: r.total)
    part, setting, size = role.largest_part()
    lower = [s for s in (setting, role.count_setting if role.count > 1 else None) if s and s != "-"]
    raise RunDoesNotFit(
        f"this run needs about {needed / GIB:.1f} GiB of memory and {where} offers {available / GIB:.1f} GiB: "
        f"the {role.kind} role takes the most ({role.count} x {role.per_member / GIB:.2f} GiB; largest part "
        f"{part} {size / GIB:.2f} GiB); lower {' or '.join(lower) or 'the role counts'} "
        f"(estimate by role: {describe(found)}). runtime.memory_check=warn starts it anyway")
