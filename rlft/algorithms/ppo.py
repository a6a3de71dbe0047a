"""PPO with a critic (docs/algorithms.md#ppo-with-a-critic): GAE advantages from a learned value model.

Schulman et al., *Proximal Policy Optimization Algorithms* (arXiv 1707.06347), with generalised
advantage estimation (arXiv 1506.02438), as InstructGPT-style RLHF runs it on language models:

* a value model, the **critic**, is trained by a learner group of its own (role kind `critic`:
  DeepSpeed ranks, `rlft.roles.learner.LearnerActor`, with the base model under a per-token scalar
  head, model_head "value", LoRA or full fine-tuning: `critic_peft`). It starts from the run's base
  model (the warm start) with a fresh head;
* every iteration the critic scores the rollouts: V_t on every response token (the state before
  token t), V_old. The sequence reward is the reward of the response's last token; with
  `kl_placement: reward` (InstructGPT) every token also earns -kl_coef * k_t, its KL to the reference
  as the learners score it before the passes (rlft.algorithms.gppo_kl_reward). GAE (rlft.ops.gae) gives per-token advantages
  A_t and returns R_t = A_t + V_t; the advantages are whitened over the batch's response tokens
  (`whiten_advantages`);
* the actor (the learners) takes gppo's clipped policy loss with these per-token advantages (every
  clip_mode, reduction, KL in the loss, old_logprobs/correction of gppo work: PPOConfig is a GPPOConfig);
* then the critic takes the same number of optimizer steps on the same rows with the clipped value
  loss 0.5 max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2) (rlft.ops.value_loss);
* critic warm-up: in the first `critic_warmup` iterations only the critic trains (the policy and the
  actor's optimizer state stay as they are), so the actor's first advantages come from a critic that
  has seen some returns.

GRPO's group statistics play no part: `advantage`, `scale_by_std`, `outcome_coef`, `process_coef` and
`dynamic_sampling` are refused when set. `group_size` is only how many samples each prompt gets.

The controller knows none of this: the spec declares the critic as a `Companion`
(rlft.algorithms.base) and the warm-up as `trains_policy`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, model_validator

from rlft.algorithms.base import AlgorithmSpec, Companion, PolicyModel, RowContext, StepCounts, rollout_passes
from rlft.algorithms.gppo import SPEC as GPPO_SPEC
from rlft.algorithms.gppo import GPPOConfig, positive_sequences
from rlft.algorithms.gppo import validate as gppo_validate
from rlft.algorithms.gppo_kl_reward import KL_IN_REWARD, kl_in_reward, kl_stats, token_kl
from rlft.ops.gae import explained_variance, gae, terminal_rewards, whiten
from rlft.ops.logprobs import IGNORE_INDEX
from rlft.ops.value_loss import clipped_value_loss
from rlft.peft import DEFAULT_METHOD, PEFT_METHODS
from rlft.rollouts import pad_rollout_rows, padded_row_values, response_mask, rollout_row

# GPPOConfig fields of the group-relative advantages, which GAE replaces: refused away from their defaults.
GROUP_ADVANTAGE_FIELDS = ("advantage", "scale_by_std", "outcome_coef", "process_coef", "dynamic_sampling")


class PPOConfig(GPPOConfig):
    name: Literal["ppo"] = "ppo"
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="Discount per response token in GAE (1: the terminal "
                         "reward reaches every token undiminished).")
    lam: float = Field(0.95, ge=0.0, le=1.0, description="GAE's lambda: 1 = discounted return minus value (no "
                       "bias from the critic, more variance), 0 = one-step TD error.")
    whiten_advantages: bool = Field(True, description="Whiten the GAE advantages over the batch's response tokens "
                                    "(mean 0, std 1) before the policy loss.")
    value_clip: float | None = Field(0.2, gt=0.0, description="eps of the clipped value loss: a value moves at most "
                                     "eps from its V_old per batch before the clip bites (None: plain 0.5 (V - R)^2).")
    critic_warmup: int = Field(0, ge=0, description="Iterations at the start in which only the critic trains (the "
                               "actor neither steps nor changes); they count in train.steps.")
    critic_lr: float | None = Field(None, gt=0.0, description="The critic's peak learning rate (None: train.lr); "
                                    "train's warm-up and schedule apply to it too.")
    critic_ranks: int | None = Field(None, ge=1, description="DeepSpeed ranks of the critic's learner group "
                                     "(None: learner.count); each reserves learner.cpus_per_rank/gpus_per_rank.")
    critic_peft: dict[str, Any] | None = Field(None, description="The critic's PEFT section, e.g. {method: full} or "
                                               "{method: lora, r: 16} (None: the run's `peft` section).")

    @model_validator(mode="after")
    def _critic_settings(self) -> "PPOConfig":
        foreign = [f for f in GROUP_ADVANTAGE_FIELDS if getattr(self, f) != GPPOConfig.model_fields[f].default]
        if foreign:
            said = ", ".join(f"{f}={getattr(self, f)!r}" for f in foreign)
            raise ValueError(f"algorithm ppo takes its advantages from the critic (GAE), not from groups: "
                             f"remove {said}")
        critic_peft_section(self, None)  # a bad critic_peft is an error now, naming the key
        return self


def critic_peft_section(cfg: PPOConfig, run_peft):
    """The critic's PEFT section: `critic_peft` validated by its method's config class, else the run's."""
    if cfg.critic_peft is None:
        return run_peft
    method = cfg.critic_peft.get("method", DEFAULT_METHOD)
    if method not in PEFT_METHODS.names():
        raise ValueError(f"critic_peft.method={method!r}: not a PEFT method ({', '.join(PEFT_METHODS.names())})")
    try:
        return PEFT_METHODS[method].config_cls.model_validate({"method": method, **cfg.critic_peft})
    except ValidationError as err:
        said = "; ".join(f"critic_peft.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(said) from None


def critic_config(run_cfg):
    """The run config the critic's ranks run under: its learning rate, ranks and PEFT section."""
    cfg = run_cfg.algorithm
    return run_cfg.model_copy(update={
        "train": run_cfg.train.model_copy(update={"lr": cfg.critic_lr or run_cfg.train.lr}),
        "learner": run_cfg.learner.model_copy(update={"count": cfg.critic_ranks or run_cfg.learner.count}),
        "peft": critic_peft_section(cfg, run_cfg.peft),
    })


# ---- rows: rollouts -> rows (build_rows); critic values -> GAE advantages (annotate) --------------------


def build_rows(rollouts: list, ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    """One row per rollout with its sequence reward; the advantages come once the critic scored the rows."""
    rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float32)
    positive = positive_sequences(rewards, ctx.algorithm)
    rows = [{**rollout_row(r, 0.0, float(p), ctx.max_length), "reward": float(r.reward)}
            for r, p in zip(rollouts, positive)]
    return rows, {}


def gae_rows(rows: list[dict], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    """Rows scored by the critic (`old_values`) -> rows with GAE `advantages` (whitened if asked) and
    `returns`; logs the batch's mean value, return and advantage and the critic's explained variance."""
    cfg = ctx.algorithm
    width = max(len(r["input_ids"]) for r in rows) - 1
    mask = response_mask(rows, width)
    values = padded_row_values(rows, "old_values", width) * mask
    rewards = terminal_rewards(torch.tensor([r["reward"] for r in rows], dtype=torch.float64), mask)
    if kl_in_reward(cfg):  # each token's KL to the reference, scored by the learners, as a reward
        rewards = rewards - cfg.kl_coef * token_kl(rows, width)[0]
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    tokens = mask.sum().clamp(min=1.0)
    stats = {"train/value_mean": float((values * mask).sum() / tokens),
             "train/return_mean": float((returns * mask).sum() / tokens),
             "train/advantage_mean": float((advantages * mask).sum() / tokens),
             "train/explained_variance": explained_variance(values, returns, mask)}
    if cfg.whiten_advantages:
        advantages = whiten(advantages, mask)
    out = [{**row, "advantages": advantages[i, : len(row["input_ids"]) - 1].tolist(),
            "returns": returns[i, : len(row["input_ids"]) - 1].tolist()} for i, row in enumerate(rows)]
    return out, stats


VALUE_KEYS = ("old_values", "returns")


def kl_reward_stats(rows: list[dict], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    """The rows as they are (their `ref_kl` enters GAE's rewards in `gae_rows`); the KL's statistics."""
    kl, mask = token_kl(rows, max(len(r["input_ids"]) for r in rows) - 1)
    return rows, kl_stats(kl, mask, ctx.algorithm.kl_coef)


def pad_ppo_rows(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """rlft.rollouts.pad_rollout_rows, plus the critic's per-position values and returns when the rows have them."""
    batch = pad_rollout_rows(rows, pad_id)
    width = batch["input_ids"].shape[1] - 1
    for key in [k for k in VALUE_KEYS if k in rows[0]]:
        batch[key] = padded_row_values(rows, key, width).to(torch.float32)
    return batch


# ---- the critic's learner contract: per-token values and the clipped value loss ------------------------


def token_values(model: PolicyModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(V [B, T-1] on the shifted positions: the value of the state before each next token, with grad;
    the response mask [B, T-1])."""
    values = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., 0]
    mask = (batch["labels"][:, 1:] != IGNORE_INDEX).to(torch.float32)
    return values[:, :-1].float(), mask


def critic_scores(model: PolicyModel, batch: dict[str, torch.Tensor], cfg: PPOConfig) -> torch.Tensor:
    """V_old [B, T-1], 0 off the response: what the critic's ranks return when they score a batch."""
    values, mask = token_values(model, batch)
    return values * mask


VALUE_METRIC_KEYS = ("value_loss_sum", "value_clip_tokens", "value_sum", "value_tokens")


def value_loss(model: PolicyModel, batch: dict[str, torch.Tensor], cfg: PPOConfig,
               counts: StepCounts) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped value loss summed over this micro-batch's response tokens / the step's token count."""
    values, mask = token_values(model, batch)
    old, returns = batch["old_values"].to(values), batch["returns"].to(values)
    token_loss, clipped = clipped_value_loss(values, old, returns, cfg.value_clip)
    loss = (token_loss * mask).sum() / max(counts.num_tokens, 1.0)
    sums = torch.stack([(token_loss.detach() * mask).sum(), (clipped * mask).sum(), (values.detach() * mask).sum(),
                        mask.sum()])
    return loss, dict(zip(VALUE_METRIC_KEYS, sums.tolist()))


def value_log_metrics(sums: dict[str, float], steps: int) -> dict[str, float]:
    tokens = max(sums["value_tokens"], 1.0)
    return {"train/value_loss": sums["value_loss_sum"] / tokens,
            "train/value_clip_frac": sums["value_clip_tokens"] / tokens}


# ---- checks and the specs -------------------------------------------------------------------------------


def trains_policy(run_cfg, iteration: int) -> bool:
    """The actor steps once the critic's warm-up iterations are over."""
    return iteration > run_cfg.algorithm.critic_warmup


def validate(run_cfg) -> None:
    gppo_validate(run_cfg)
    cfg, critic = run_cfg.algorithm, critic_config(run_cfg)
    iterations = run_cfg.train.steps // GPPO_SPEC.optimizer_steps(run_cfg)
    if cfg.critic_warmup >= iterations:
        raise ValueError(f"algorithm.critic_warmup={cfg.critic_warmup} iterations leave the actor none of the run's "
                         f"{iterations} (train.steps / optimizer steps per iteration): lower it")
    method = PEFT_METHODS[critic.peft.method]
    if "value" not in method.heads:
        offer = ", ".join(n for n in PEFT_METHODS.names() if "value" in PEFT_METHODS[n].heads)
        raise ValueError(f"the critic's PEFT method {critic.peft.method} cannot train a value head; set "
                         f"algorithm.critic_peft to one that can ({offer})")
    ranks, micro = critic.learner.count, run_cfg.train.micro_batch_size
    if run_cfg.train.batch_size % (ranks * micro):
        raise ValueError(f"train.batch_size={run_cfg.train.batch_size} does not split into the critic's {ranks} ranks "
                         f"x micro-batches of {micro}: change algorithm.critic_ranks")


VALUE_SPEC = AlgorithmSpec(
    summary="the critic of ppo: per-token values, clipped value loss",
    name="ppo_critic", config_cls=PPOConfig, source="rollouts", micro_batch_loss=value_loss, build_rows=build_rows,
    pad=pad_ppo_rows, passes=rollout_passes, proximal_logprobs=critic_scores, log_metrics=value_log_metrics,
    model_head="value",
)

CRITIC = Companion(kind="critic", spec=VALUE_SPEC, run_config=critic_config, annotate=gae_rows,
                   score_key="old_values", count_setting="algorithm.critic_ranks")

SPEC = dataclasses.replace(
    GPPO_SPEC, name="ppo", config_cls=PPOConfig, summary="PPO with a critic: GAE advantages from a value model "
    "trained by its own learner group, gppo's clipped policy loss", roles=("generator", "reward", "critic"),
    build_rows=build_rows, pad=pad_ppo_rows, validate=validate, companions=(CRITIC,), trains_policy=trains_policy,
    learner_scores=dataclasses.replace(KL_IN_REWARD, annotate=kl_reward_stats),
)
