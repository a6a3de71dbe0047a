"""The clipped policy-gradient family: GPPO (Klear-Reasoner), PPO/GRPO, DAPO, GSPO, CISPO (docs/algorithms.md#gppo).

Two choices make a variant, each a registry of pure-torch math in rlft.ops:

* `clip_mode`, the policy loss (rlft.algorithms.gppo_losses): gppo (the default) keeps PPO's clip
  *values* but lets clipped tokens carry a bounded gradient through delta / sg(delta), delta =
  pi_theta / pi_old (its case table: rlft.ops.surrogates and the docs); ppo is the ordinary clip
  (symmetric PPO/GRPO, DAPO clip-higher with eps_high > eps_low); gspo and gspo_token clip one
  length-normalised ratio per sequence; cispo clips a detached importance weight on log pi_theta.
* `advantage`, the estimator (rlft.algorithms.gppo_advantages): grpo (the default; Dr.GRPO with
  scale_by_std False), rloo, reinforce_pp, reinforce_pp_baseline.

Original GRPO = ppo + seq-mean-token-mean + KL in the loss (k3); Dr.GRPO = scale_by_std False +
seq-mean-token-sum-norm.

KL. kl_placement="loss": + kl_coef * reduce(k) with k from rlft.ops.kl against
model.reference_logits (only called when kl_coef > 0). kl_placement="reward" (InstructGPT, and
REINFORCE++'s token-level KL): each token earns -kl_coef * k as a reward, so the advantages become
per-token returns; the learners score the KL before the batch's passes
(rlft.algorithms.gppo_kl_reward, the spec's `learner_scores`).

pi_old. old_logprobs="sampler": the generators' sampling log-probs. old_logprobs="learner": the
learners first score each batch under the weights they hold (pi_prox, `proximal_logprobs`), the
ratio is pi_theta / pi_prox, and the behaviour weight w = pi_prox / pi_sampler (tis/mis, per token
or sequence: rlft.ops.mismatch) multiplies each token's policy loss, whatever the loss. Tokens that
mis zeroes still count in the token-mean normaliser (zero loss, as in veRL and slime).

Normalisers. Every term uses the step-global `StepCounts`, so micro-batches and ranks sum to the
full-batch loss (a sequence-level loss puts its value on each of the sequence's tokens, and a
sequence is never split). The auxiliary NLL on fully-correct responses (Klear's
`positive_loss_coeff`) is a token sum over positive sequences divided by the step's *total* token
count; relative to Klear's token-mean over positive tokens only, this scales the term by (positive
tokens / all tokens): tune aux_nll_coef accordingly.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from rlft.algorithms.base import AlgorithmSpec, PolicyModel, RowContext, StepCounts, rollout_passes
from rlft.algorithms.gppo_advantages import ADVANTAGE_ESTIMATORS, GRPOFields, check_advantage
from rlft.algorithms.gppo_kl_reward import BASE_KEY as KL_BASE_KEY
from rlft.algorithms.gppo_kl_reward import KL_IN_REWARD, kl_in_reward
from rlft.algorithms.gppo_losses import POLICY_LOSSES, CISPOFields, ClipFields, GSPOFields, check_policy_loss
from rlft.ops.advantages import broadcast_to_tokens, dynamic_sampling_keep
from rlft.ops.kl import kl_penalty
from rlft.ops.logprobs import tempered, token_entropy, token_logprobs
from rlft.ops.mismatch import MISMATCH_KEYS, behaviour_weights, mismatch_metrics, mismatch_sums
from rlft.ops.reductions import aggregate, token_mean
from rlft.ops.surrogates import ClipRegions, gppo_token_loss, ppo_token_loss  # noqa: F401 (re-exported)
from rlft.registry import UnknownName
from rlft.rollouts import filler_row, pad_rollout_rows, process_token_advantages, rollout_row, trained_token_count
from rlft.types import Rollout


class GPPOConfig(ClipFields, GSPOFields, CISPOFields, GRPOFields):
    name: Literal["gppo"] = "gppo"
    clip_mode: str = Field(
        "gppo", description="The policy loss (rlft.algorithms.gppo_losses.POLICY_LOSSES): gppo (gradient-preserving "
        "clip), ppo (ordinary clip, zero gradient outside the bounds), gspo (sequence ratio and clip), gspo_token "
        "(GSPO with per-token advantages), cispo (clipped detached importance weight on a REINFORCE term)."
    )
    advantage: str = Field(
        "grpo", description="The advantage estimator (rlft.algorithms.gppo_advantages.ADVANTAGE_ESTIMATORS): grpo "
        "(group mean and std), rloo (leave-one-out group mean), reinforce_pp (whitened over the batch; with "
        "kl_placement reward, REINFORCE++'s per-token returns), reinforce_pp_baseline (group mean removed, then "
        "whitened over the batch)."
    )
    reduction: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = Field(
        "token-mean",
        description="token-mean (DAPO/GPPO), seq-mean-token-mean (GRPO), seq-mean-token-sum-norm (Dr.GRPO).",
    )
    max_len: int | None = Field(
        None, ge=1, description="Constant T_max for seq-mean-token-sum-norm (the rollout max response length)."
    )
    kl_coef: float = Field(0.0, ge=0.0, description="KL penalty coefficient beta against the reference (0: no KL).")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="Schulman KL estimator per token.")
    k3_clamp: float | None = Field(
        10.0, gt=0.0, description="Clamp k3 to [-c, c] as veRL's low_var_kl (None: unclamped)."
    )
    kl_placement: Literal["loss", "reward"] = Field(
        "loss", description="loss: beta*KL term in the loss (GRPO); reward: each token earns -beta*KL as a reward, "
        "so its advantage is a per-token return (InstructGPT, REINFORCE++; docs/algorithms.md#kl-in-the-reward)."
    )
    aux_nll_coef: float = Field(
        0.0, ge=0.0, description="Weight of the auxiliary NLL on fully-correct responses (Klear uses 0.1)."
    )
    group_size: int = Field(8, ge=1, description="Rollouts per prompt (the GRPO group).")
    outcome_coef: float = Field(
        1.0, ge=0.0, description="Weight of the outcome advantage (the `advantage` estimator's, per sequence).")
    process_coef: float = Field(
        0.0, ge=0.0, description="Weight of the process advantage (group-normalised step rewards summed from each "
        "token's step on, docs/algorithms.md#process-advantages); needs rollout.step_delimiter and a reward "
        "component that scores steps (progress)."
    )
    dynamic_sampling: bool = Field(False, description="Drop groups whose rewards are all equal (DAPO).")
    positive_reward_threshold: float = Field(
        1.0, description="A response is fully correct (aux NLL target) when its reward is >= this."
    )
    old_logprobs: Literal["sampler", "learner"] = Field(
        "sampler", description="pi_old of the clipped ratio: sampler (the generators' sampling log-probs) or learner "
        "(pi_prox: the learners rescore each batch before its optimizer passes; enables `correction`).")
    correction: Literal["none", "tis", "mis"] = Field(
        "none", description="Behaviour weight w = pi_prox / pi_sampler on each token's loss (old_logprobs: learner): "
        "none (w = 1), tis (truncated: min(w, C)), mis (masked: 0 outside [1/C, C]).")
    correction_level: Literal["token", "sequence"] = Field(
        "token", description="w per token, or per sequence (the geometric mean of its token ratios).")
    correction_cap: float = Field(2.0, gt=1.0, description="C of the correction: tis caps w at C, mis keeps [1/C, C].")

    @field_validator("clip_mode")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        return _registered(POLICY_LOSSES, name)

    @field_validator("advantage")
    @classmethod
    def _known_estimator(cls, name: str) -> str:
        return _registered(ADVANTAGE_ESTIMATORS, name)

    @model_validator(mode="after")
    def _consistent(self) -> "GPPOConfig":
        if self.reduction == "seq-mean-token-sum-norm" and self.max_len is None:
            raise ValueError("reduction 'seq-mean-token-sum-norm' needs max_len (the constant T_max)")
        if self.outcome_coef == 0 and self.process_coef == 0 and not self.other_advantages():
            raise ValueError("outcome_coef and process_coef are both 0: no advantage is left to train on")
        if self.correction != "none" and self.old_logprobs == "sampler":
            raise ValueError(f"algorithm.correction={self.correction} needs algorithm.old_logprobs=learner: with the "
                             "sampler's log-probs as pi_old the weight pi_prox / pi_sampler is 1 on every token")
        check_policy_loss(self)
        check_advantage(self)
        return self


    def other_advantages(self) -> bool:
        """Whether a subclass adds an advantage term of its own (distillation's teacher term)."""
        return False


def _registered(registry, name: str) -> str:
    """name, or a ValueError (which pydantic reports with the key) naming the valid ones."""
    try:
        registry.get(name)
    except UnknownName as err:
        raise ValueError(str(err)) from None
    return name


def policy_token_loss(cfg: GPPOConfig, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, ClipRegions]:
    """The configured policy loss per token [B, T] (`clip_mode`; mask: the sampled response tokens)."""
    return POLICY_LOSSES[cfg.clip_mode].token_loss(cfg, logprobs, old_logprobs, advantages, mask)


# ---- rollout-side helpers (pure): what the learner puts into the batch -------------------------


def outcome_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: GPPOConfig,
                       token_counts: torch.Tensor | None = None) -> torch.Tensor:
    """The configured estimator's advantage per sequence [N] (`advantage`). token_counts [N]: the tokens
    each sequence trains, the weights of batch statistics (None: 1 each)."""
    counts = torch.ones_like(rewards, dtype=torch.float64) if token_counts is None else token_counts
    return ADVANTAGE_ESTIMATORS[cfg.advantage].advantages(cfg, rewards, group_ids, counts)


def token_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, token_mask: torch.Tensor,
                     cfg: GPPOConfig) -> torch.Tensor:
    """The configured outcome advantages, broadcast to tokens [N, T]."""
    return broadcast_to_tokens(outcome_advantages(rewards, group_ids, cfg, token_mask.sum(-1)), token_mask)


def positive_sequences(rewards: torch.Tensor, cfg: GPPOConfig) -> torch.Tensor:
    """batch['positive']: 1.0 for fully-correct responses (reward >= threshold), else 0.0."""
    return (rewards >= cfg.positive_reward_threshold).to(torch.float32)


def sequence_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: GPPOConfig,
                        token_counts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Rollout-stage quantities per sequence: outcome advantages, positives, groups kept (batch
    statistics count only the kept sequences' tokens)."""
    keep = torch.ones_like(rewards, dtype=torch.bool)
    if cfg.dynamic_sampling:
        keep = dynamic_sampling_keep(rewards, group_ids=group_ids)
    counts = torch.ones_like(rewards, dtype=torch.float64) if token_counts is None else token_counts
    advantages = outcome_advantages(rewards, group_ids, cfg, counts * keep)
    return {"advantages": advantages, "positive": positive_sequences(rewards, cfg), "keep": keep}


def build_rows(rollouts: list[Rollout], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    """Scored rollouts -> policy-gradient rows; dropped groups are replaced by loss-free fillers
    so the number of rows (and so the micro-batch layout) stays fixed."""
    cfg = ctx.algorithm
    rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float32)
    groups = torch.tensor([r.group for r in rollouts])
    counts = torch.tensor([trained_token_count(r, ctx.max_length) for r in rollouts], dtype=torch.float64)
    seq = sequence_advantages(rewards, groups, cfg, counts)
    advantages: list = [cfg.outcome_coef * float(a) for a in seq["advantages"]]
    if cfg.process_coef:  # per token: outcome + process (mixed by the two weights)
        advantages = [[a + cfg.process_coef * p for p in per_token]
                      for a, per_token in zip(advantages, process_token_advantages(rollouts, cfg.scale_by_std))]
    rows = [rollout_row(r, a, float(p), ctx.max_length)
            for r, a, p, keep in zip(rollouts, advantages, seq["positive"], seq["keep"]) if keep]
    if kl_in_reward(cfg):  # the outcome term of each kept row; the learners' KL scores turn it into returns
        base = ADVANTAGE_ESTIMATORS[cfg.advantage].kl_reward_base(cfg, rewards, groups, counts * seq["keep"])
        kept_base = [cfg.outcome_coef * float(b) for b, keep in zip(base, seq["keep"]) if keep]
        rows = [{**row, KL_BASE_KEY: b} for row, b in zip(rows, kept_base)]
    kept = len(rows)
    like = rows[0] if rows else rollout_row(rollouts[0], 0.0, 0.0, ctx.max_length)
    rows += [filler_row(like) for _ in range(len(rollouts) - kept)]
    return rows, {"rollout/kept_fraction": kept / len(rollouts)}


def log_metrics(sums: dict[str, float], steps: int) -> dict[str, float]:
    """Token fractions of the summed clip counts, entropy and KL per token."""
    tokens = max(sums["tokens"], 1.0)
    return {
        "train/clip_low_frac": sums["clip_low_tokens"] / tokens, "train/clip_high_frac": sums["clip_high_tokens"] / tokens,
        "train/dual_clip_frac": sums["dual_clip_tokens"] / tokens, "train/entropy": sums["entropy_sum"] / tokens,
        "train/kl": sums["kl_sum"] / tokens, **mismatch_metrics(sums),
    }


def validate(run_cfg, segments_from_turns: bool = False) -> None:
    """segments_from_turns: the source cuts rollouts into turn segments itself (episodes)."""
    cfg = run_cfg.algorithm
    if run_cfg.train.batch_size % cfg.group_size:
        raise ValueError(f"train.batch_size={run_cfg.train.batch_size} is not a multiple of "
                         f"algorithm.group_size={cfg.group_size}")
    if run_cfg.rollout.temperature <= 0:
        raise ValueError("rollout.temperature=0 samples greedily: a policy gradient needs sampled rollouts (T > 0)")
    if kl_in_reward(cfg) and cfg.process_coef > 0:
        raise ValueError("algorithm.kl_placement=reward with process_coef > 0: the KL reward and the step rewards "
                         "are not combined into one return; use kl_placement=loss with process advantages")
    if cfg.process_coef > 0:
        from rlft.rewards import REWARD_COMPONENTS

        if run_cfg.rollout.step_delimiter is None and not segments_from_turns:
            raise ValueError("algorithm.process_coef > 0 needs step segments: set rollout.step_delimiter (e.g. '\\n')")
        if not any(REWARD_COMPONENTS[c.name].scores_segments for c in run_cfg.reward.components):
            raise ValueError("algorithm.process_coef > 0 needs step rewards: add a reward component that scores "
                             "steps to reward.components (e.g. {name: progress, weight: 0, segment_weight: 1})")


def group_size(run_cfg) -> int:
    return run_cfg.algorithm.group_size


def needs_reference(run_cfg) -> bool:
    return run_cfg.algorithm.kl_coef > 0  # in the loss, or scored into the reward before the passes


def learner_logprobs(run_cfg) -> bool:
    return run_cfg.algorithm.old_logprobs == "learner"


# ---- the learner contract ------------------------------------------------------------------------


def _reduce(values: torch.Tensor, mask: torch.Tensor, cfg: GPPOConfig, counts: StepCounts) -> torch.Tensor:
    return aggregate(
        values,
        mask,
        cfg.reduction,
        num_tokens=counts.num_tokens,
        num_sequences=counts.num_sequences,
        max_len=float(cfg.max_len or 1),
    )


def _kl_in_loss(model, batch, logprobs, mask, cfg, counts) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta * reduced KL, masked KL sum) against the reference policy."""
    with torch.no_grad():
        ref_logprobs, _ = token_logprobs(tempered(model.reference_logits(batch), batch), batch["labels"])
    kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator, cfg.k3_clamp)
    return cfg.kl_coef * _reduce(kl, mask, cfg, counts), (kl.detach() * mask).sum()


METRIC_KEYS = (
    "pg_loss_sum",
    "clip_low_tokens",
    "clip_high_tokens",
    "dual_clip_tokens",
    "kl_sum",
    "entropy_sum",
    "tokens",
    "aux_nll_sum",
    "positive_tokens",
)


def _positive_mask(batch: dict[str, torch.Tensor], mask: torch.Tensor, required: bool) -> torch.Tensor:
    """Token mask of the fully-correct sequences (batch['positive'] [B]); zeros if absent and not needed."""
    if "positive" not in batch and not required:
        return torch.zeros_like(mask)
    return mask * batch["positive"].to(mask.dtype).unsqueeze(-1)


@torch.no_grad()
def _metrics(logits, logprobs, mask, token_loss, regions, kl_sum, positive_mask, mismatch) -> dict[str, float]:
    sums = torch.stack([
        (token_loss * mask).sum(),
        (regions.low * mask).sum(),
        (regions.high * mask).sum(),
        (regions.dual * mask).sum(),
        kl_sum,
        (token_entropy(logits) * mask).sum(),
        mask.sum(),
        (-logprobs * positive_mask).sum(),
        positive_mask.sum(),
    ])
    if mismatch is None:
        return dict(zip(METRIC_KEYS, sums.tolist()))  # one device sync for all metrics
    return dict(zip(METRIC_KEYS + MISMATCH_KEYS, torch.cat([sums, mismatch.to(sums)]).tolist()))


def proximal_logprobs(model: PolicyModel, batch: dict[str, torch.Tensor], cfg: GPPOConfig) -> torch.Tensor:
    """log pi_prox [B, T-1]: the batch's tokens scored as the loss scores them (tempered), 0 off the
    label mask. The learners call it without grad before the batch's optimizer passes."""
    return token_logprobs(tempered(model.logits(batch), batch), batch["labels"])[0]


def behaviour(batch: dict[str, torch.Tensor], sampler_logprobs: torch.Tensor, mask: torch.Tensor, cfg: GPPOConfig,
              unsampled: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(pi_old of the clipped ratio [B, T], behaviour weights w [B, T], mismatch sums or None).
    unsampled [B, T]: 1 on labelled tokens the sampler did not produce (they get w = 1 and no metric)."""
    if cfg.old_logprobs == "sampler":
        return sampler_logprobs, torch.ones_like(sampler_logprobs), None
    if "prox_logprobs" not in batch:
        raise KeyError("algorithm.old_logprobs=learner: the batch has no prox_logprobs (Controller.optimize adds them)")
    prox = torch.where(mask > 0, batch["prox_logprobs"].to(sampler_logprobs.dtype), 0.0)
    sampled = mask if unsampled is None else mask * (1.0 - unsampled.to(mask.dtype))
    w, corrected = behaviour_weights(prox, sampler_logprobs, sampled, cfg.correction, cfg.correction_level,
                                     cfg.correction_cap)
    return prox, w, mismatch_sums(prox, sampler_logprobs, sampled, w, corrected)


def micro_batch_loss(
    model: PolicyModel, batch: dict[str, torch.Tensor], cfg: GPPOConfig, counts: StepCounts
) -> tuple[torch.Tensor, dict[str, float]]:
    """Policy loss (+ beta*KL if placed in the loss) (+ aux NLL on positives) of one micro-batch.

    Metrics are sums over this micro-batch (add across micro-batches/ranks, divide by counts);
    kl_sum is 0 unless the KL is in the loss.
    """
    loss, metrics, _, _ = policy_loss(model, batch, cfg, counts)
    return loss, metrics


def policy_loss(
    model: PolicyModel, batch: dict[str, torch.Tensor], cfg: GPPOConfig, counts: StepCounts,
    unsampled: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """micro_batch_loss's (loss, metrics), plus the token log-probs and label mask it computed, for
    algorithms that add terms of their own (and may mark labelled tokens the sampler did not produce)."""
    logits = tempered(model.logits(batch), batch)
    logprobs, mask = token_logprobs(logits, batch["labels"])
    # Off-mask logprobs are 0: zero old_logprobs there too so delta = 1 whatever the batch holds.
    sampler_logprobs = torch.where(mask > 0, batch["old_logprobs"].to(logprobs.dtype), 0.0)
    advantages = batch["advantages"].to(logprobs.dtype) * mask
    old_logprobs, w, mismatch = behaviour(batch, sampler_logprobs, mask, cfg, unsampled)
    sampled = mask if unsampled is None else mask * (1.0 - unsampled.to(mask.dtype))
    token_loss, regions = policy_token_loss(cfg, logprobs, old_logprobs, advantages, sampled)
    token_loss = w * token_loss  # w is a constant: it scales each token's gradient
    loss = _reduce(token_loss, mask, cfg, counts)
    kl_sum = torch.zeros((), device=logprobs.device)
    if cfg.kl_coef > 0 and cfg.kl_placement == "loss":
        kl_loss, kl_sum = _kl_in_loss(model, batch, logprobs, mask, cfg, counts)
        loss = loss + kl_loss
    positive_mask = _positive_mask(batch, mask, required=cfg.aux_nll_coef > 0)
    if cfg.aux_nll_coef > 0:
        # Normalised by the step's total token count (see the module docstring).
        loss = loss + cfg.aux_nll_coef * token_mean(-logprobs, positive_mask, counts.num_tokens)
    metrics = _metrics(logits.detach(), logprobs.detach(), mask, token_loss.detach(), regions, kl_sum, positive_mask,
                       mismatch)
    return loss, metrics, logprobs, mask


SPEC = AlgorithmSpec(
    summary="GPPO / PPO-clip policy gradient with GRPO group advantages (the main job)",
    name="gppo",
    config_cls=GPPOConfig,
    source="rollouts",
    roles=("generator", "reward"),
    micro_batch_loss=micro_batch_loss,
    build_rows=build_rows,
    pad=pad_rollout_rows,
    passes=rollout_passes,
    samples_per_prompt=group_size,
    needs_reference=needs_reference,
    recompute_logprobs=learner_logprobs,
    proximal_logprobs=proximal_logprobs,
    validate=validate,
    log_metrics=log_metrics,
    learner_scores=KL_IN_REWARD,
)

