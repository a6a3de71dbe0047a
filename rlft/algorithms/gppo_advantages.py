"""The advantage estimators of the GPPO family, picked by `algorithm.advantage`
(docs/algorithms.md#advantage-estimators).

Each estimator is an `AdvantageSpec` in ADVANTAGE_ESTIMATORS: a function of the batch's sequence
rewards, group ids and token counts (its math lives in rlft.ops: advantages.py for grpo, rloo.py,
reinforce_pp.py), the config fields it reads and the smallest group it can work with. With the KL in
the reward (`kl_placement: reward`, rlft.algorithms.gppo_kl_reward) the returns differ per token:
`kl_base` gives each sequence's outcome term before the KL reward-to-go is taken off, and `whitens`
says whether the per-token returns are then whitened over the batch's tokens (REINFORCE++) or used
as they are (grpo, rloo: the group baseline applies to the outcome reward only). GRPO's one
field, `scale_by_std`, is declared here (`GRPOFields`); it also scales the process advantages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from pydantic import Field

from rlft.algorithms.gppo_losses import foreign_fields
from rlft.ops.advantages import group_relative_advantages
from rlft.ops.reinforce_pp import reinforce_pp_advantages, reinforce_pp_baseline_advantages, reinforce_pp_baseline_base
from rlft.ops.rloo import rloo_advantages
from rlft.registry import Registry
from rlft.schema import Section


class GRPOFields(Section):
    scale_by_std: bool = Field(True, description="grpo (and the process advantages): divide by the group's std "
                               "(False: Dr.GRPO, centred only).")


# (cfg, rewards [N], group_ids [N], token_counts [N]) -> advantages [N]; token_counts are the tokens
# each sequence trains (0 for a sequence dropped by dynamic sampling), the batch-statistics weights.
EstimatorFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class AdvantageSpec:
    name: str
    advantages: EstimatorFn
    fields: tuple[str, ...] = ()  # the config fields it reads
    min_group_size: int = 1  # the smallest algorithm.group_size it is defined for
    summary: str = ""
    kl_base: EstimatorFn | None = None  # the outcome term under a KL in the reward (None: `advantages`)
    whitens: bool = False  # per-token returns whitened over the batch's tokens (with a KL in the reward)

    def kl_reward_base(self, cfg, rewards, group_ids, token_counts) -> torch.Tensor:
        """The sequence term [N] from which kl_placement=reward takes each token's KL reward-to-go."""
        return (self.kl_base or self.advantages)(cfg, rewards, group_ids, token_counts)


def _grpo(cfg, rewards, group_ids, token_counts):
    return group_relative_advantages(rewards, group_ids=group_ids, scale_by_std=cfg.scale_by_std)


def _rloo(cfg, rewards, group_ids, token_counts):
    return rloo_advantages(rewards, group_ids)


def _reinforce_pp(cfg, rewards, group_ids, token_counts):
    return reinforce_pp_advantages(rewards, token_counts)


def _reinforce_pp_baseline(cfg, rewards, group_ids, token_counts):
    return reinforce_pp_baseline_advantages(rewards, group_ids, token_counts)


def _reward(cfg, rewards, group_ids, token_counts):
    return rewards.to(torch.float64)


def _reward_less_group_mean(cfg, rewards, group_ids, token_counts):
    return reinforce_pp_baseline_base(rewards, group_ids)


ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator (algorithm.advantage)", {
    "grpo": AdvantageSpec("grpo", _grpo, ("scale_by_std",),
                          summary="(r - group mean) / group std (GRPO; Dr.GRPO without the std)"),
    "rloo": AdvantageSpec("rloo", _rloo, min_group_size=2,
                          summary="r - mean of the other G - 1 rewards of the group (RLOO)"),
    "reinforce_pp": AdvantageSpec("reinforce_pp", _reinforce_pp, kl_base=_reward, whitens=True,
                                  summary="returns whitened over the batch's tokens (REINFORCE++)"),
    "reinforce_pp_baseline": AdvantageSpec(
        "reinforce_pp_baseline", _reinforce_pp_baseline, min_group_size=2, kl_base=_reward_less_group_mean,
        whitens=True, summary="r - group mean, then whitened over the batch (REINFORCE++-baseline)"),
})


def check_advantage(cfg) -> None:
    """Config errors of the chosen estimator (GPPOConfig's validator calls it)."""
    spec = ADVANTAGE_ESTIMATORS[cfg.advantage]
    reads = set(spec.fields) | ({"scale_by_std"} if cfg.process_coef > 0 else set())
    foreign = foreign_fields(cfg, (GRPOFields,), reads)
    if foreign:
        said = ", ".join(f"{f}={getattr(cfg, f)!r}" for f in foreign)
        raise ValueError(f"advantage={cfg.advantage} does not read {said} (grpo's field; it also scales the process "
                         "advantages when process_coef > 0)")
    if cfg.group_size < spec.min_group_size:
        raise ValueError(f"advantage={cfg.advantage} needs group_size >= {spec.min_group_size} (a baseline from the "
                         f"other responses to the same prompt); got group_size={cfg.group_size}")
