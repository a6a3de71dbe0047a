"""YAML recipe -> typed, validated config.

Sections are pydantic models (rlft.schema.Section) that forbid unknown keys; each field's
default lives on the field. `task`, `algorithm`, `peft` and each entry of `reward.components` are
named sections (NAMED_SECTIONS): their `name` (for `peft`: `method`) picks the config class from a
registry, and the class lives in the file of the task, algorithm, PEFT method or reward component.
Every error names the file and the dotted key and, for unknown names, suggests the closest valid one.

Plain data: importing this module imports no torch, transformers, vLLM, DeepSpeed or Ray; only
validating a config imports the one task, algorithm and PEFT method (and components) it names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from rlft.algorithms import ALGORITHMS
from rlft.data.model_config import KNOWN_MODEL_NAMES, ModelConfig
from rlft.data.tasks import TASKS
from rlft.peft import DEFAULT_METHOD, PEFT_METHODS
from rlft.registry import closest
from rlft.rewards import REWARD_COMPONENTS
from rlft.schema import Section


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the file and key."""


class RunConfig(Section):
    name: str = Field("run", description="Run name; outputs go to <output_dir>/<name>/.")
    output_dir: str = Field("runs", description="Folder that holds run folders.")
    seed: int = Field(0, description="Seed for data order, sampling and initialisation.")
    if_exists: Literal["new", "error", "overwrite"] = Field(
        "new", description="When the run folder holds a run: new: write to <name>-2, -3, ...; error: refuse; "
        "overwrite: reuse it (its metrics are replaced)."
    )


class RolesConfig(Section):
    learner: str = Field("deepspeed", description="Learner role class (rlft.roles.ROLES['learner']).")
    critic: str = Field("deepspeed", description="Critic role class (rlft.roles.ROLES['critic']; algorithm ppo).")
    generator: str = Field("vllm", description="Generator role class (rlft.roles.ROLES['generator']).")
    reward: str = Field("checker", description="Reward role class (rlft.roles.ROLES['reward']).")
    environment: str = Field("bm25", description="Environment role class (rlft.roles.ROLES['environment']).")
    teacher: str = Field("hf", description="Teacher role class (rlft.roles.ROLES['teacher']).")


class RuntimeConfig(Section):
    mode: Literal["inline", "local", "cluster"] = Field(
        "local", description="inline: plain objects in one process; local: Ray actors on this machine (a Ray started "
        "here); cluster: Ray actors on an existing Ray cluster (README \"Run on a cluster\")."
    )
    ray_address: str | None = Field(
        None, description="Cluster mode: the cluster's GCS address (host:port); None: $RAY_ADDRESS (set inside a "
        "`ray job submit` job), else the cluster running on this node."
    )
    storage: str | None = Field(
        None, description="Cluster mode: an absolute folder that every node reads and writes at the same path (NFS, "
        "a shared disk). A relative run.output_dir and the model cache (unless model.cache_dir is set) go under it."
    )
    placement_timeout_s: float = Field(
        300.0, gt=0, description="Seconds to wait for the cluster to offer the learner ranks' resources."
    )
    call_timeout_s: float | None = Field(
        3600.0, gt=0, description="Seconds any call of a role may take (remote modes; None: no limit). On a timeout "
        "the stuck role's stacks are written to <run>/stacks/ and the run stops."
    )
    max_restarts: int = Field(
        3, ge=0, description="Times in a row a dead generator, reward or environment actor (also one killed for "
        "memory) is replaced before the run stops."
    )
    num_cpus: int | None = Field(None, description="CPUs the local Ray cluster may use (None: all).")
    memory_check: Literal["refuse", "warn", "off"] = Field(
        "refuse", description="Local and inline modes on CPU: estimate every role's memory before it starts "
        "(rlft.footprint; written to <run>/memory_estimate.json) and refuse a run that needs more than "
        "runtime.memory_gb, naming the role and the setting to lower (warn: log it and start anyway)."
    )
    memory_gb: float | None = Field(
        None, gt=0, description="GiB of memory the run may use (None: what this machine has available now, less "
        "the 5% of its total that Ray's memory monitor keeps free)."
    )
    log_level: Literal["quiet", "info", "debug"] = Field(
        "quiet", description="What the console shows. quiet: progress bars, rlft's warnings, errors and the summary; "
        "the driver's other lines go to <run>/train.log and each role member's output (vLLM, DeepSpeed, Ray, "
        "prints) to <run>/logs/<role>-<i>.log. info (`rlft train --verbose`): everything on the console, as "
        "before. debug: info, with rlft, vLLM and DeepSpeed at DEBUG."
    )
    roles: RolesConfig = Field(default_factory=RolesConfig, description="Registered class of each role kind.")


class LearnerConfig(Section):
    count: int = Field(2, ge=1, description="Number of DeepSpeed learner ranks.")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        2, description="DeepSpeed ZeRO stage: 1 partitions the optimizer state across ranks, 2 also the gradients, "
        "3 also the parameters (each rank holds 1/count of the model; forwards, exports and checkpoints gather "
        "it layer group by layer group: peft.method full or lora, docs/design.md#zero-3).")
    zero3_persistence_threshold: int = Field(
        100_000, ge=0, description="ZeRO-3: parameters with fewer elements stay whole on every rank (DeepSpeed's "
        "stage3_param_persistence_threshold; gathering small tensors costs more time than their memory is worth)."
    )
    zero3_live_mb: int = Field(
        128, ge=1, description="ZeRO-3: the most MiB of parameters a rank holds gathered at once in forward and "
        "backward passes, and the size of its gradient reduce buckets (DeepSpeed's stage3_max_live_parameters, "
        "stage3_max_reuse_distance, stage3_prefetch_bucket_size and reduce_bucket_size, whose defaults would "
        "gather up to 10^9 parameters); a single larger tensor is still gathered whole."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when a GPU is visible.")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on cuda, gloo on cpu.")
    cpus_per_rank: float = Field(1.0, gt=0, description="Ray CPUs reserved per learner rank.")
    gpus_per_rank: float | None = Field(
        None, ge=0, description="Ray GPUs reserved per learner rank (None: 1 when the Ray cluster has GPUs, else 0)."
    )
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy of the learner ranks (PACK: as few nodes as possible)."
    )
    resources: dict[str, float] = Field(
        {}, description="Extra Ray resources per rank, e.g. {node_a: 1}: custom resources pin ranks to the nodes "
        "that offer them."
    )
    threads_per_rank: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        None, description="torch threads per rank. None: cpus_per_rank. auto: in local mode with a synchronous loop "
        "(rollout.max_staleness 0) the machine's cores shared among the ranks, since generation and training take "
        "turns on the same cores (on 2 cores one SmolLM2 rank trained 1.2-1.5x faster with 2 threads than with 1); "
        "otherwise cpus_per_rank."
    )


class GeneratorConfig(Section):
    count: int = Field(2, ge=1, description="Number of vLLM generator actors.")
    cpus_per_actor: float = Field(1.0, gt=0, description="Ray CPUs reserved per generator.")
    gpus_per_actor: float | None = Field(
        None, ge=0, description="Ray GPUs reserved per generator (None: 1 when the Ray cluster has GPUs, else 0)."
    )
    resources: dict[str, float] = Field({}, description="Extra Ray resources per generator (see learner.resources).")
    kv_cache_mb: int | None = Field(
        256, description="KV cache size in MiB (recommended on CPU); None: use gpu_memory_utilization."
    )
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="Fraction of device memory for vLLM.")
    tensor_parallel_size: int = Field(
        1, ge=1, description="Devices one generator's engine spans (vLLM tensor parallelism: each worker holds a "
        "shard of every layer; weight syncs reach every worker). Each generator reserves this many times "
        "cpus_per_actor and gpus_per_actor; on CPU each worker gets its own cores.")
    enforce_eager: bool = Field(True, description="Skip CUDA graphs / torch.compile (faster start).")
    max_model_len: int | None = Field(None, description="Context length (None: the model's).")
    bind_cpus: bool = Field(True, description="On CPU, give each engine its own share of the cores (one engine: all of them).")
    engine_processes: Literal["auto", "separate", "in_actor"] = Field(
        "auto", description="Where vLLM's engine core and its worker run. separate: processes of their own (vLLM's "
        "default); in_actor: inside the generator actor's process (no processes spawned, vLLM imported once, a sync "
        "payload not copied between processes: on CPU an engine starts several times faster and takes ~1 GB less). "
        "auto: in_actor for CPU engines in local and cluster modes; separate on GPU, in inline mode (where the "
        "engine would share the driver's threads with the learner) and for tensor-parallel engines."
    )

    @model_validator(mode="after")
    def _workers_have_processes(self) -> "GeneratorConfig":
        if self.tensor_parallel_size > 1 and self.engine_processes == "in_actor":
            raise ValueError(f"tensor_parallel_size={self.tensor_parallel_size} runs one worker process per shard: "
                             "set engine_processes to auto or separate (in_actor runs a single worker)")
        return self


class RewardConfig(Section):
    count: int = Field(1, ge=1, description="Number of reward actors.")
    cpus_per_actor: float = Field(0.25, gt=0, description="Ray CPUs reserved per reward actor.")
    resources: dict[str, float] = Field({}, description="Extra Ray resources per reward actor (see learner.resources).")
    components: list[Any] = Field(
        [{"name": "answer", "weight": 1.0}],
        description="Weighted reward components (rlft.rewards): answer = the task's answer checker, "
        "steps = mean of its per-step checker, progress = mid-step rewards from a progress tracker (needs "
        "rollout.step_delimiter), reward_model = a trained reward model's score (rlft.rewards.reward_model); "
        "reward = sum of weight x value.",
    )


class EnvironmentConfig(Section):
    count: int = Field(1, ge=1, description="Number of environment actors (multi-turn episodes: the retriever).")
    cpus_per_actor: float = Field(0.25, gt=0, description="Ray CPUs reserved per environment actor.")
    resources: dict[str, float] = Field({}, description="Extra Ray resources per environment actor.")


class RolloutConfig(Section):
    max_new_tokens: int = Field(32, ge=1, description="Sampled tokens per completion.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    step_delimiter: str | None = Field(
        None, min_length=1, description="Cut each completion into step segments at this text (\"\\n\": one step per "
        "line); step rewards (reward component `progress`) and process advantages (gppo process_coef) need it."
    )
    max_turns: int = Field(
        3, ge=1, description="Multi-turn episodes: searches before the model must answer (one more turn answers)."
    )
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per pass over a rollout batch.")
    epochs: int = Field(1, ge=1, description="Passes over each rollout batch (>1 or mini_batches>1: off-policy steps).")
    max_staleness: int = Field(
        0, ge=0, description="0: generate, then train (synchronous). k >= 1: generators sample up to k batches "
        "ahead while the learners train (asynchronous): batch i is started once the policy is at version i - 1 - k, "
        "so it trains at most k versions after the one that began sampling it; a batch found staler is dropped and "
        "counted (rollout/dropped_batches). 1: the next batch is generated while this one trains. Only for "
        "algorithms with generators."
    )
    in_flight_updates: bool = Field(
        False, description="With max_staleness >= 1: a weight update reaches the generators while they sample "
        "(vLLM's scheduler paused between two steps, requests in flight kept, then resumed), so a response can span "
        "versions, each token keeping the version and log-prob that sampled it. false: an update waits for the batch "
        "in generation to finish (every response one version; exact resume). Needs weights written into the "
        "engine (sync.weights=merged, or an adapter that is not a vLLM LoRA)."
    )


class SyncConfig(Section):
    weights: Literal["adapter", "merged"] = Field(
        "adapter", description="What generators get after an update. adapter: the method's own delta: LoRA "
        "tensors (lora, pissa as rank 2r, paca as a column-selector LoRA), run as a vLLM LoRA (small payload; LoRA "
        "kernels slow generation, ~4x for SmolLM2 in bf16 on CPU), LIFT's trained entries, HFT's trained tensors "
        "(written into the engine's weights: base-model speed). merged: every weight with the delta merged in, "
        "reloaded in place (payload = the whole model); full fine-tuning needs merged."
    )
    bucket_mb: int | None = Field(
        128, ge=1, description="Dense and partial payloads travel in buckets of about this many MiB of whole decoder "
        "layers: the learner frees merged weights bucket by bucket and each vLLM process holds one bucket at a time "
        "(None: one bucket, the whole model)."
    )
    transport: Literal["object_store", "collective"] = Field(
        "object_store", description="How merged weights reach the generators. object_store: serialised, put in Ray's "
        "object store (inline: handed over) and loaded by each generator. collective: learner rank 0 broadcasts them "
        "in buckets straight into every engine worker over a process group of their own (gloo on CPU, NCCL on GPU, "
        "as learner.backend; rlft.sync.transport): no serialisation, no object-store copies. Needs sync.weights: "
        "merged (adapter payloads are small and keep the object store)."
    )
    group_timeout_s: float = Field(
        1800.0, gt=0, description="sync.transport: collective: seconds a member of the weight group waits for the others "
        "(forming the group, one bucket's broadcast) before it fails."
    )
    parity_every: int = Field(1, ge=0, description="Run the logprob parity probe every N syncs (0: never).")
    parity_statistic: Literal["auto", "max", "mean"] = Field(
        "auto", description="What the probe compares: max or mean |learner - generator| log-prob over its tokens "
        "(auto: max in float32, mean in 16 bits, where single tokens differ by rounding)."
    )
    parity_tolerance: float | None = Field(
        None, gt=0, description="Largest allowed value of that statistic before the run stops (None: by statistic and "
        "dtype, rlft.sync.protocol.PARITY_TOLERANCE: max 1e-3 in float32, mean 0.1 in 16 bits)."
    )


def _check_sync_transport(cfg: "RLFTConfig", source: str) -> None:
    """sync.transport: collective against the layouts it cannot serve."""
    if cfg.sync.transport != "collective":
        return
    if cfg.sync.weights != "merged":
        raise ConfigError(
            f"{source}: key 'sync.transport': collective broadcasts whole models and needs sync.weights=merged "
            f"(got sync.weights={cfg.sync.weights}); adapter payloads (LoRA, LIFT's entries, HFT's tensors) travel "
            "by the object store: set sync.transport=object_store or sync.weights=merged")
    if cfg.runtime.mode == "inline" and cfg.generator.count > 1:
        raise ConfigError(
            f"{source}: key 'sync.transport': collective needs every generator receiving at once, and inline mode "
            f"calls its {cfg.generator.count} generators one after another; set generator.count=1, "
            "runtime.mode=local or sync.transport=object_store")
    if cfg.runtime.mode == "inline" and cfg.generator.engine_processes == "in_actor":
        raise ConfigError(
            f"{source}: key 'sync.transport': collective in inline mode needs the engine in processes of its own (the "
            "learner sends from this process while the engine receives); set generator.engine_processes=auto or "
            "separate, or sync.transport=object_store")


class TrainConfig(Section):
    steps: int = Field(100, ge=1, description="Optimizer steps.")
    batch_size: int = Field(64, ge=1, description="Sequences per optimizer step, over all ranks.")
    micro_batch_size: int = Field(16, ge=1, description="Sequences per forward/backward on one rank.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="LR decay after warm-up.")
    grad_clip: float = Field(1.0, ge=0, description="Max global grad norm (0: off).")
    max_length: int = Field(256, ge=8, description="Prompt+response tokens kept per sequence.")
    eval_every: int = Field(
        0, ge=0, description="Evaluate every N optimizer steps (after the iteration that reaches a multiple; 0: at the end)."
    )
    save_every: int = Field(
        0, ge=0, description="Checkpoint every N optimizer steps, with everything exact resume needs (0: only the "
        "final one, plus one when the run is stopped by SIGTERM)."
    )
    keep_checkpoints: int | None = Field(
        None, ge=1, description="Keep only the newest N step checkpoints (None: keep every one; the final one is always kept)."
    )
    max_skipped_steps: int = Field(
        3, ge=1, description="Optimizer steps in a row that may be skipped for a NaN or inf loss or gradient; one "
        "more stops the run (each skipped step is counted in train/skipped_steps)."
    )
    log_every: int = Field(1, ge=1, description="Log train metrics every N optimizer steps.")
    log_samples: int = Field(
        4, ge=0, description="Rollouts kept at every logged step, chosen by run.seed and the step, in "
        "<run>/samples.jsonl and the wandb table `samples` (`rlft samples RUN_DIR` prints them; 0: none)."
    )


class EvalConfig(Section):
    num_examples: int = Field(200, ge=0, description="Held-out examples scored per evaluation.")
    max_new_tokens: int = Field(32, ge=1, description="Greedy tokens generated per example.")
    batch_size: int = Field(64, ge=1, description="Prompts per generation batch.")


class DiffusionConfig(Section):
    """Sampling and evaluation of diffusion models (rlft.families.mdlm); unused by language models."""

    sample_steps: int = Field(64, ge=1, description="Reverse steps when generators (or the learner) sample.")
    loglik_steps: int = Field(32, ge=1, description="Steps of the approximate log-likelihood (eval/log_likelihood).")
    reference_fraction: float = Field(
        0.05, gt=0, le=1, description="The k-mer and motif references: this top fraction of the target cell type's "
        "sequences in the data, ranked by the evaluation oracle."
    )
    eval_batch: int = Field(128, ge=1, description="Sequences per sampling batch in evaluation.")


class DataConfig(Section):
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="Wrap prompts in the tokenizer's chat template (auto: when it has one)."
    )


class WarmStartConfig(Section):
    recipe: str | None = Field(None, description="SFT recipe run first; its final checkpoint becomes the base model.")
    overrides: list[str] = Field([], description="Dotted overrides for the warm-start recipe.")
    reuse: bool = Field(True, description="Reuse an earlier warm start with the same recipe and overrides.")


class TeacherConfig(WarmStartConfig):
    """The teacher of on-policy distillation (algorithm `distill`): a model folder (`model`), or a recipe run
    first whose final checkpoint is the teacher (`recipe`, `overrides`, `reuse`: as a warm start's)."""

    recipe: str | None = Field(None, description="Recipe run first (when no finished run of it with the same "
                                                 "overrides exists); its final checkpoint is the teacher.")
    model: str | None = Field(None, description="The teacher's model folder, or a model name as model.name takes "
                                                "(instead of `recipe`); it must share the student's tokenizer.")
    count: int = Field(1, ge=1, description="Number of teacher actors (rollouts are split among them).")
    cpus_per_actor: float = Field(1.0, gt=0, description="Ray CPUs reserved per teacher actor.")
    gpus_per_actor: float | None = Field(
        None, ge=0, description="Ray GPUs reserved per teacher (None: 1 when the Ray cluster has GPUs, else 0).")
    resources: dict[str, float] = Field({}, description="Extra Ray resources per teacher actor (see learner.resources).")
    micro_batch_size: int = Field(64, ge=1, description="Rollouts the teacher scores in one forward pass.")

    @model_validator(mode="after")
    def _one_teacher(self) -> "TeacherConfig":
        if self.recipe is not None and self.model is not None:
            raise ValueError("teacher.recipe and teacher.model are both set: the teacher is one or the other")
        return self


class TrackingConfig(Section):
    wandb: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online when wandb is logged in, else offline."
    )
    project: str = Field("rlft", description="wandb project.")
    plots: bool = Field(True, description="Write PNG plots at the end of the run.")


class RLFTConfig(Section):
    run: RunConfig = RunConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    model: ModelConfig = ModelConfig()
    peft: Any = Field(..., description="PEFT section; `method` picks the method (default lora).")
    task: Any = Field(..., description="Task section; `name` picks the task.")
    algorithm: Any = Field(..., description="Algorithm section; `name` picks the algorithm.")
    train: TrainConfig = TrainConfig()
    learner: LearnerConfig = LearnerConfig()
    generator: GeneratorConfig = GeneratorConfig()
    reward: RewardConfig = RewardConfig()
    environment: EnvironmentConfig = EnvironmentConfig()
    rollout: RolloutConfig = RolloutConfig()
    sync: SyncConfig = SyncConfig()
    eval: EvalConfig = EvalConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    data: DataConfig = DataConfig()
    tracking: TrackingConfig = TrackingConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    teacher: TeacherConfig = TeacherConfig()
    resume: str = Field(
        "never", description="never: start a new run. auto: continue the newest run of this name from its newest "
        "complete checkpoint (start a new run when it has none; do nothing when it finished). Or the path of a "
        "step checkpoint folder to continue from."
    )

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


@dataclass(frozen=True)
class NamedSection:
    """A section whose `key` picks its config class: `registry[value].config_cls`."""

    registry: Any
    key: str = "name"
    default: str | None = None  # the value when the section or its key is left out (None: required)


# Top-level section -> how it is named. reward.components entries are named sections of
# rlft.rewards.REWARD_COMPONENTS (_validate_components).
NAMED_SECTIONS = {
    "task": NamedSection(TASKS),
    "algorithm": NamedSection(ALGORITHMS),
    "peft": NamedSection(PEFT_METHODS, key="method", default=DEFAULT_METHOD),
}
_suggest = closest


def _fields_at(model_cls: type[Section] | None, loc: tuple) -> list[str]:
    """Valid field names of the nested section addressed by loc (for suggestions)."""
    for key in loc:
        if model_cls is None:
            return []
        field = model_cls.model_fields.get(str(key))
        ann = getattr(field, "annotation", None) if field else None
        model_cls = ann if isinstance(ann, type) and issubclass(ann, Section) else None
    return list(model_cls.model_fields) if model_cls else []


def _format_errors(err: ValidationError, model_cls: type[Section], source: str, prefix: tuple) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(prefix) + tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            hint = _suggest(str(loc[-1]), _fields_at(model_cls, tuple(e["loc"])[:-1]))
            lines.append(f"{source}: unknown key '{key}'{hint}")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _validate_named(raw: Any, kind: str, source: str, section: NamedSection | None = None,
                    key: str | None = None) -> Section:
    section = NAMED_SECTIONS[kind] if section is None else section
    registry, name_key, key = section.registry, section.key, key or kind
    if section.default is not None and raw is None:
        raw = {}
    if section.default is not None and isinstance(raw, dict) and name_key not in raw:
        raw = {name_key: section.default, **raw}
    if not isinstance(raw, dict) or name_key not in raw:
        raise ConfigError(f"{source}: section '{key}' needs a '{name_key}' (one of {sorted(registry)})")
    name = raw[name_key]
    if not isinstance(name, str) or name not in registry:
        hint = _suggest(str(name), sorted(registry))
        raise ConfigError(
            f"{source}: unknown {kind} {name_key} {name!r} at key '{key}.{name_key}'{hint}; "
            f"valid: {', '.join(sorted(registry))}"
        )
    cls = registry[name].config_cls
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, cls, source, tuple(key.split(".")))) from None


def _validate_components(raw: dict, source: str) -> None:
    """reward.components: each entry a named section of rlft.rewards.REWARD_COMPONENTS."""
    reward = raw.get("reward", {})
    if not isinstance(reward, dict):
        return  # the section's own validation reports it
    entries = reward.get("components", RewardConfig.model_fields["components"].default)
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: key 'reward.components' must be a non-empty list of {{name, weight}} entries")
    raw["reward"] = {**reward, "components": [
        _validate_named(entry, "reward component", source, NamedSection(REWARD_COMPONENTS), f"reward.components.{i}")
        for i, entry in enumerate(entries)
    ]}


def _check_model_name(cfg: RLFTConfig, source: str) -> None:
    name = cfg.model.name
    if name in KNOWN_MODEL_NAMES or os.path.exists(name) or "/" in name:
        return
    hint = _suggest(name, sorted(KNOWN_MODEL_NAMES))
    raise ConfigError(
        f"{source}: unknown model name {name!r} at key 'model.name'{hint}; give one of "
        f"{sorted(KNOWN_MODEL_NAMES)}, a local HF folder, or a hub id (org/name)"
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a','b','c'], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=1e-4")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r}: empty key")
    return parts, yaml.safe_load(value) if value.strip() else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def switch_peft_method(section: dict, method: Any) -> dict:
    """A raw `peft` section with its method set to `method`, keeping only the keys that method has a
    field for (an unknown method keeps them all: validation then names it)."""
    if not isinstance(method, str) or method not in PEFT_METHODS:
        return {**section, "method": method}
    fields = PEFT_METHODS[method].config_cls.model_fields
    return {**{k: v for k, v in section.items() if k in fields}, "method": method}


def _switch_peft_by_override(raw: dict, overrides: list[str]) -> dict:
    """An override that gives `peft.method` another method drops the recipe's `peft` keys that the new
    method has no field for (an override cannot delete a key, and `peft.method=full` on a LoRA recipe
    should not fail on its `r`). Keys given as overrides are still checked against the new method."""
    methods = [value for parts, value in map(parse_override, overrides) if parts == ["peft", "method"]]
    section = raw.get("peft")
    if not methods or not isinstance(section, dict) or methods[-1] == section.get("method", DEFAULT_METHOD):
        return raw
    return {**raw, "peft": switch_peft_method(section, methods[-1])}


def config_from_dict(raw: dict, source: str = "<dict>") -> RLFTConfig:
    raw = dict(raw)
    named = {kind: _validate_named(raw.pop(kind, None), kind, source) for kind in NAMED_SECTIONS}
    _validate_components(raw, source)
    try:
        cfg = RLFTConfig.model_validate({**raw, **named})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, RLFTConfig, source, ())) from None
    _check_model_name(cfg, source)
    _check_sync_transport(cfg, source)
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RLFTConfig:
    """Read a recipe, apply dotted overrides, validate. Errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    raw = apply_overrides(_switch_peft_by_override(raw, overrides or []), overrides or [])
    source = str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    return config_from_dict(raw, source)


def dump_config(cfg: RLFTConfig) -> str:
    """Resolved config as YAML (every default filled in)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
