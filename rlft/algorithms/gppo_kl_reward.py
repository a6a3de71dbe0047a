"""The KL to the reference put into the reward (`kl_placement: reward`, docs/algorithms.md#kl-in-the-reward).

InstructGPT and REINFORCE++ (Hu, arXiv 2501.03262) keep the KL out of the loss: every response token s
earns the reward -beta k_s, k_s the KL estimate of the policy against the reference at that token,
and the outcome reward arrives at the end. With gamma = 1 the return of token t is

    G_{i,t} = b_i - beta sum_{s >= t} k_{i,s}        (rlft.ops.advantages.kl_reward_returns)

b_i is the estimator's outcome term (`AdvantageSpec.kl_reward_base`, times outcome_coef): for
REINFORCE++ the reward, for REINFORCE++-baseline the reward less its group's mean, and these
estimators whiten G over the batch's response tokens (`AdvantageSpec.whitens`); for grpo and rloo b_i
is their group advantage and the KL reward-to-go is added as it is (the group baseline is for the
outcome reward only).

k_s is a reward, not a loss: the learners compute it once per batch, before its first optimizer pass,
under the policy they hold then (tempered like the sampler) against the reference, with `kl_estimator`
and `k3_clamp`; it carries no gradient. The spec declares it as `LearnerScores`: the controller has
the learners score the rows (`reference_kl`, put into the rows as `ref_kl`) and `kl_reward_rows`
turns the scores into each row's per-token advantages.
"""

from __future__ import annotations

import torch

from rlft.algorithms.base import LearnerScores, PolicyModel, RowContext
from rlft.algorithms.gppo_advantages import ADVANTAGE_ESTIMATORS
from rlft.ops.advantages import kl_reward_returns
from rlft.ops.gae import whiten
from rlft.ops.kl import kl_penalty
from rlft.ops.logprobs import tempered, token_logprobs
from rlft.rollouts import padded_row_values, response_mask

BASE_KEY = "kl_base"  # each row's outcome term b_i (build_rows puts it in; a dropped group's filler: none)
SCORE_KEY = "ref_kl"


def kl_in_reward(cfg) -> bool:
    """Whether the algorithm config `cfg` puts a KL into the reward."""
    return cfg.kl_coef > 0 and cfg.kl_placement == "reward"


def applies(run_cfg) -> bool:
    return kl_in_reward(run_cfg.algorithm)


def reference_kl(model: PolicyModel, batch: dict[str, torch.Tensor], cfg) -> torch.Tensor:
    """k_t [B, T-1] of the current policy against the reference on the batch's labelled tokens, 0 elsewhere."""
    logprobs, mask = token_logprobs(tempered(model.logits(batch), batch), batch["labels"])
    ref_logprobs, _ = token_logprobs(tempered(model.reference_logits(batch), batch), batch["labels"])
    return kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator, cfg.k3_clamp) * mask


def kl_reward_rows(rows: list[dict], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    """Rows with `ref_kl` and `kl_base` -> rows whose `advantages` are the per-token returns (whitened when the
    estimator whitens); logs the KL per response token and the KL reward per sequence."""
    cfg = ctx.algorithm
    kl, mask = token_kl(rows, max(len(r["input_ids"]) for r in rows) - 1)
    base = torch.tensor([r.get(BASE_KEY, 0.0) for r in rows], dtype=torch.float64)
    returns = kl_reward_returns(base, kl, mask, cfg.kl_coef)
    if ADVANTAGE_ESTIMATORS[cfg.advantage].whitens:
        returns = whiten(returns, mask)
    out = [{**row, "advantages": returns[i, : len(row["input_ids"]) - 1].tolist()} for i, row in enumerate(rows)]
    return out, kl_stats(kl, mask, cfg.kl_coef)


def kl_stats(kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> dict[str, float]:
    """rollout/ref_kl: the mean k per response token; rollout/kl_reward: -beta sum_t k_t per sequence."""
    sequences = max(float((mask.sum(-1) > 0).sum()), 1.0)
    return {"rollout/ref_kl": float(kl.sum() / mask.sum().clamp(min=1.0)),
            "rollout/kl_reward": -kl_coef * float(kl.sum()) / sequences}


def token_kl(rows: list[dict], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k [N, width] of the rows' `ref_kl` on their response tokens, the response mask [N, width])."""
    mask = response_mask(rows, width)
    return padded_row_values(rows, SCORE_KEY, width) * mask, mask


KL_IN_REWARD = LearnerScores(applies=applies, score=reference_kl, annotate=kl_reward_rows, key=SCORE_KEY)
