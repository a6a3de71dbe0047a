"""What an algorithm declares, and what the learner gives it (docs/design.md#adding-an-algorithm).

An algorithm is one file under rlft/algorithms/ with a config section, pure tensor functions for
its loss (torch only; pieces several losses share live in rlft.ops), its row building (which may use
the data helpers below it: rlft.data, rlft.rollouts; rows are not math), and `SPEC =
AlgorithmSpec(...)` registered in rlft/algorithms/__init__.py.
The spec says everything the controller needs, so the controller never branches on a name:

  * `source`: the registered data source it trains on (rlft.sources: "dataset" rows,
    "rollouts" generated and scored by the generator and reward roles; later pairs, trees, ...);
  * `roles`: the role kinds it needs besides the learners ("generator", "reward");
  * `build_rows(items, ctx)`: a source batch (examples, scored rollouts) -> training rows;
  * `pad(rows, pad_id)`: rows -> the tensor batch the loss reads;
  * `micro_batch_loss(model, batch, cfg, counts)`: the loss of one micro-batch, normalised by the
    step-global counts, so the sum over micro-batches and ranks is the loss of the whole step;
  * `passes(run_cfg)`: (mini-batches, epochs): optimizer steps taken on one source batch;
  * `samples_per_prompt(run_cfg)`: rollouts per prompt (the group size) for rollout sources;
  * `needs_reference(run_cfg)`: whether the learner must keep a reference policy;
  * `recompute_logprobs(run_cfg)`: whether the learners score every batch once, before its
    optimizer passes, with `proximal_logprobs(model, batch, cfg)` (no grad; log pi_prox [B, T-1]),
    which the controller puts into the rows as `prox_logprobs` (the rollout/training mismatch);
  * `log_metrics(sums, steps)`: summed metric sums -> logged `train/...` metrics (sums add over
    micro-batches, ranks and passes; a key ending in `_max` keeps the largest value: `add_metric_sums`);
  * `validate(run_cfg)`: its own checks of the whole config (ValueError before any role starts);
  * `model_head`: which model the learners load from the base folder: "lm" (the family's own model,
    a causal LM's next-token head) or "score" (one scalar per sequence: a reward model,
    `AutoModelForSequenceClassification` with num_labels=1); the family and the PEFT method must
    offer it (their `heads`, checked before any role starts);
  * `summary`: what it is, in one line (`rlft algorithms` lists them);
  * `companions`: learner groups of its own beside the policy's (`Companion`: a PPO critic). Each is a
    role kind of `roles`, DeepSpeed ranks (rlft.roles.learner.LearnerActor) started with the run
    config `companion.run_config(run_cfg)` and the spec `companion.spec` (its head, loss and per-token
    score). Every iteration the controller has each companion score the built rows with its spec's
    `proximal_logprobs` (no grad; put into the rows as `companion.score_key`), hands the scored rows to
    `companion.annotate(rows, ctx)` (the critic's values -> GAE advantages), and after the policy's
    optimizer steps lets each companion take its own steps on the same rows; its state goes into step
    checkpoints beside the learners';
  * `trains_policy(run_cfg, iteration)`: whether the learners take their optimizer steps in this
    iteration (False: only the companions train, e.g. a critic's warm-up; the policy stays as it is);
  * `learner_scores`: per-token scores the learners themselves compute on the built rows before any
    pass (`LearnerScores`: a KL to the reference put into the reward), when its `applies(run_cfg)`;
    the controller puts them into the rows as `key` and hands the rows to its `annotate(rows, ctx)`
    (before the companions score them).

The learner knows nothing about any algorithm: for each micro-batch it calls
`spec.micro_batch_loss(...)` and backpropagates the returned loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from rlft.data.collate import pad_rows
from rlft.ops.logprobs import IGNORE_INDEX
from rlft.schema import Section


@dataclass(frozen=True)
class StepCounts:
    """Global counts over every micro-batch on every rank of one optimisation step."""

    num_tokens: float
    num_sequences: float
    step: int = 0  # optimizer steps taken before this one (the controller counts them); for schedules in a loss


class PolicyModel(Protocol):
    """What an algorithm may ask of the model under training."""

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Policy logits [B, T, V] for batch['input_ids'] / batch['attention_mask'] (with grad)."""

    def reference_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reference-policy logits (no grad; what the reference is depends on the PEFT method)."""

    def logits_and_hidden_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`logits(batch)` and the last-layer hidden states [B, T, H] of the same forward pass."""

    def input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input-embedding lookup [B, T, D] of the current weights, without grad (a constant)."""

    def logits_from_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Policy logits [B, T, V] for given input embeddings (with grad, like `logits`)."""

    def __call__(self, *args, **kwargs):
        """The model's own forward, with grad (models other than causal LMs: a diffusion denoiser)."""

    def reference(self, *args, **kwargs):
        """The reference model's own forward, without grad."""

    @property
    def config(self):
        """The model's own config (e.g. a diffusion model's sequence length)."""


@dataclass
class RowContext:
    """What `build_rows` may use: tokenizer and prompt format, limits, the algorithm config."""

    tokenizer: Any
    chat: bool
    max_length: int
    algorithm: Any


LossFn = Callable[[PolicyModel, dict[str, torch.Tensor], Any, StepCounts], "tuple[torch.Tensor, dict[str, float]]"]
RowsFn = Callable[[list, RowContext], "tuple[list[dict], dict[str, float]]"]


def count_label_tokens(batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(valid target tokens after the causal shift, sequences) of a batch with `labels`."""
    labels = batch["labels"]
    return float((labels[:, 1:] != IGNORE_INDEX).sum().item()), float(labels.shape[0])


def add_metric_sums(totals: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
    """Accumulate one piece's metrics (a micro-batch's, a rank's, a pass's) into `totals`, in place:
    values add up, except keys ending in `_max`, which keep the largest value."""
    for key, value in metrics.items():
        if key.endswith("_max") and key in totals:
            totals[key] = max(totals[key], value)
        else:
            totals[key] = totals.get(key, 0.0) + value
    return totals


def combine_metric_sums(pieces) -> dict[str, float]:
    """The metrics of several pieces (ranks, passes) combined by `add_metric_sums`."""
    totals: dict[str, float] = {}
    for metrics in pieces:
        add_metric_sums(totals, metrics)
    return totals


def single_pass(run_cfg) -> tuple[int, int]:
    return 1, 1


def rollout_passes(run_cfg) -> tuple[int, int]:
    """rollout.mini_batches optimizer steps per source batch, rollout.epochs times (on-line algorithms)."""
    return run_cfg.rollout.mini_batches, run_cfg.rollout.epochs


def one_sample(run_cfg) -> int:
    return 1


def never(run_cfg) -> bool:
    return False


def no_checks(run_cfg) -> None:
    return None


def always(run_cfg, iteration: int) -> bool:
    return True


def loss_only(sums: dict[str, float], steps: int) -> dict[str, float]:
    return {}


@dataclass(frozen=True)
class AlgorithmSpec:
    """Registration record of one algorithm."""

    name: str
    config_cls: type[Section]
    source: str
    micro_batch_loss: LossFn
    build_rows: RowsFn
    pad: Callable[[list[dict], int], dict[str, torch.Tensor]] = pad_rows
    roles: tuple[str, ...] = ()
    count_tokens: Callable[[dict[str, torch.Tensor]], tuple[float, float]] = count_label_tokens
    passes: Callable[[Any], tuple[int, int]] = single_pass
    samples_per_prompt: Callable[[Any], int] = one_sample
    needs_reference: Callable[[Any], bool] = never
    recompute_logprobs: Callable[[Any], bool] = never
    proximal_logprobs: Callable[[PolicyModel, dict[str, torch.Tensor], Any], torch.Tensor] | None = None
    validate: Callable[[Any], None] = no_checks
    log_metrics: Callable[[dict[str, float], int], dict[str, float]] = loss_only
    model_head: str = "lm"  # "lm": the family's model; "score": a scalar sequence-score head (reward models)
    summary: str = ""  # what it is, in one line (`rlft algorithms`)
    companions: tuple["Companion", ...] = ()  # learner groups of its own beside the policy's (a critic)
    trains_policy: Callable[[Any, int], bool] = always  # (run_cfg, iteration): do the learners step this iteration
    learner_scores: "LearnerScores | None" = None  # per-token scores of the rows by the learners, before the passes

    def __post_init__(self):
        for companion in self.companions:
            if companion.kind not in self.roles:
                raise ValueError(f"algorithm {self.name}: companion {companion.kind!r} must be one of its roles "
                                 f"{self.roles} (the set-up starts roles in that order)")

    def companion(self, kind: str) -> "Companion":
        """The companion group of role kind `kind`."""
        for companion in self.companions:
            if companion.kind == kind:
                return companion
        raise KeyError(f"algorithm {self.name} has no companion learner group {kind!r}")

    def optimizer_steps(self, run_cfg) -> int:
        """Optimizer steps taken on one source batch."""
        mini_batches, epochs = self.passes(run_cfg)
        return mini_batches * epochs


@dataclass(frozen=True)
class Companion:
    """A learner group an algorithm trains beside the policy (docs/design.md#companion-learner-groups).

    Its members are learner ranks (the role class `runtime.roles.<kind>`, by default LearnerActor) that
    run `spec` (model head, loss, per-token score in `spec.proximal_logprobs`, pad, passes, metrics)
    under `run_config(run_cfg)` (the run's config with the group's own learning rate, ranks, PEFT ...).
    The controller, each iteration: rows = spec-of-the-run.build_rows(batch); the companion scores them
    (`score_key` per token, like the learners' proximal log-probs); rows = annotate(rows, ctx) with its
    stats logged; the policy's optimizer steps; then the companion's own optimizer steps on those rows.
    `count_setting` names the setting of its number of ranks (memory and resource messages)."""

    kind: str
    spec: AlgorithmSpec
    run_config: Callable[[Any], Any]
    annotate: Callable[[list[dict], RowContext], "tuple[list[dict], dict[str, float]]"]
    score_key: str = "scores"
    count_setting: str = "learner.count"


@dataclass(frozen=True)
class LearnerScores:
    """Per-token scores the policy's own learners compute on an iteration's rows before any optimizer pass
    (with the weights they hold then), and what the algorithm makes of them: with a KL in the reward,
    each token's KL to the reference becomes part of its return (rlft.algorithms.gppo_kl_reward).

    `score(model, batch, cfg)` runs on every learner rank without grad ([B, T-1], 0 off the labels); the
    controller puts the scores into the rows as `key` and calls `annotate(rows, ctx)` -> (rows, stats)."""

    applies: Callable[[Any], bool]
    score: Callable[[PolicyModel, dict[str, torch.Tensor], Any], torch.Tensor]
    annotate: Callable[[list[dict], RowContext], "tuple[list[dict], dict[str, float]]"]
    key: str

