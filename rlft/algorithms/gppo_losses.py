"""The policy losses of the GPPO family, picked by `algorithm.clip_mode` (docs/algorithms.md#policy-losses).

Each loss is a `PolicyLossSpec` in POLICY_LOSSES: the per-token function (its math lives in
rlft.ops: surrogates.py for gppo and ppo, gspo.py, cispo.py), the config fields it reads and
whether it needs one advantage per sequence. A loss's own fields are declared here in a small
section (`ClipFields`, `GSPOFields`, `CISPOFields`) that GPPOConfig inherits, so each default
lives in exactly one place; a field of another loss set away from its default is a config error
(`foreign_fields`), so `clip_mode: cispo` with `eps_high: 0.3` does not silently ignore it.

Adding a loss: its math in a new rlft/ops file, its fields section and `PolicyLossSpec` here, the
section among GPPOConfig's bases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from pydantic import Field

from rlft.ops.cispo import cispo_token_loss
from rlft.ops.gspo import gspo_loss, gspo_token_loss
from rlft.ops.surrogates import ClipRegions, gppo_token_loss, ppo_token_loss
from rlft.registry import Registry
from rlft.schema import Section


class ClipFields(Section):
    """The token-level trust region of gppo and ppo (PPO-clip, DAPO clip-higher, GPPO)."""

    eps_low: float = Field(0.2, ge=0.0, lt=1.0, description="gppo/ppo: lower clip range, ratio bound 1 - eps_low.")
    eps_high: float = Field(0.28, ge=0.0, description="gppo/ppo: upper clip range, ratio bound 1 + eps_high "
                            "(clip-higher).")
    beta1: float = Field(1.0, ge=0.0, description="gppo: weight of the low-side bound (A < 0, ratio < 1 - eps_low).")
    beta2: float = Field(1.0, ge=0.0, description="gppo: weight of the high-side bound (A > 0, ratio > 1 + eps_high).")
    dual_clip_c: float | None = Field(
        10.0, gt=1.0, description="gppo/ppo: dual-clip constant c, for A < 0 the loss is capped at -c*A (None: off)."
    )


class GSPOFields(Section):
    """GSPO's sequence-level clip ranges (the paper's values; its ratios are per-token geometric means)."""

    gspo_eps_low: float = Field(3e-4, ge=0.0, lt=1.0, description="gspo/gspo_token: lower clip range of the "
                                "sequence ratio s_i, bound 1 - gspo_eps_low (GSPO paper: 3e-4).")
    gspo_eps_high: float = Field(4e-4, ge=0.0, description="gspo/gspo_token: upper clip range of the sequence "
                                 "ratio s_i, bound 1 + gspo_eps_high (GSPO paper: 4e-4).")


class CISPOFields(Section):
    """CISPO's clip of the (detached) importance weight."""

    cispo_eps_high: float = Field(
        4.0, gt=0.0, description="cispo: the importance weight is capped at 1 + cispo_eps_high. MiniMax-M1 tunes it "
        "but publishes no value; 4.0 (cap 5) is ScaleRL's (arXiv 2510.13786) as SkyRL reads it.")
    cispo_eps_low: float | None = Field(
        None, ge=0.0, le=1.0, description="cispo: lower bound 1 - cispo_eps_low of the weight (None: no lower bound, "
        "as in MiniMax-M1).")


TokenLossFn = Callable[..., "tuple[torch.Tensor, ClipRegions]"]


@dataclass(frozen=True)
class PolicyLossSpec:
    """One policy loss: token_loss(cfg, logprobs, old_logprobs, advantages, mask) -> (loss [B, T], ClipRegions)."""

    name: str
    token_loss: TokenLossFn
    fields: tuple[str, ...]  # the config fields it reads (of the loss sections above)
    sequence_advantages: bool = False  # needs one advantage per sequence (not per-token process advantages)
    summary: str = ""


def _gppo(cfg, logprobs, old_logprobs, advantages, mask):
    return gppo_token_loss(logprobs, old_logprobs, advantages, cfg.eps_low, cfg.eps_high, cfg.beta1, cfg.beta2,
                           cfg.dual_clip_c)


def _ppo(cfg, logprobs, old_logprobs, advantages, mask):
    return ppo_token_loss(logprobs, old_logprobs, advantages, cfg.eps_low, cfg.eps_high, cfg.dual_clip_c)


def _gspo(cfg, logprobs, old_logprobs, advantages, mask):
    return gspo_loss(logprobs, old_logprobs, advantages, mask, cfg.gspo_eps_low, cfg.gspo_eps_high)


def _gspo_token(cfg, logprobs, old_logprobs, advantages, mask):
    return gspo_token_loss(logprobs, old_logprobs, advantages, mask, cfg.gspo_eps_low, cfg.gspo_eps_high)


def _cispo(cfg, logprobs, old_logprobs, advantages, mask):
    return cispo_token_loss(logprobs, old_logprobs, advantages, cfg.cispo_eps_high, cfg.cispo_eps_low)


POLICY_LOSSES: Registry = Registry("policy loss (algorithm.clip_mode)", {
    "gppo": PolicyLossSpec("gppo", _gppo, ("eps_low", "eps_high", "beta1", "beta2", "dual_clip_c"),
                           summary="gradient-preserving clip (Klear-Reasoner)"),
    "ppo": PolicyLossSpec("ppo", _ppo, ("eps_low", "eps_high", "dual_clip_c"),
                          summary="ordinary token clip: PPO, GRPO, DAPO clip-higher"),
    "gspo": PolicyLossSpec("gspo", _gspo, ("gspo_eps_low", "gspo_eps_high"), sequence_advantages=True,
                           summary="sequence ratio and clip (GSPO)"),
    "gspo_token": PolicyLossSpec("gspo_token", _gspo_token, ("gspo_eps_low", "gspo_eps_high"),
                                 summary="GSPO's sequence ratio with per-token advantages (GSPO-token)"),
    "cispo": PolicyLossSpec("cispo", _cispo, ("cispo_eps_high", "cispo_eps_low"),
                            summary="clipped, detached importance weight on a REINFORCE term (MiniMax-M1)"),
})

LOSS_SECTIONS = (ClipFields, GSPOFields, CISPOFields)


def foreign_fields(cfg: Section, sections: tuple[type[Section], ...], reads: set[str]) -> list[str]:
    """Fields of `sections` that the chosen options do not read but `cfg` sets away from their default."""
    return [name for section in sections for name, field in section.model_fields.items()
            if name not in reads and getattr(cfg, name) != field.default]


def check_policy_loss(cfg) -> None:
    """Config errors of the chosen loss (GPPOConfig's validator calls it)."""
    spec = POLICY_LOSSES[cfg.clip_mode]
    foreign = foreign_fields(cfg, LOSS_SECTIONS, set(spec.fields))
    if foreign:
        owners = {f: [n for n in POLICY_LOSSES if f in POLICY_LOSSES[n].fields] for f in foreign}
        said = "; ".join(f"{f}={getattr(cfg, f)!r} (read by clip_mode {' / '.join(owners[f])})" for f in foreign)
        raise ValueError(f"clip_mode={cfg.clip_mode} does not read {said}; clip_mode={cfg.clip_mode} reads "
                         f"{', '.join(spec.fields)}")
    if spec.sequence_advantages and cfg.process_coef > 0:
        raise ValueError(f"clip_mode={cfg.clip_mode} clips one ratio per sequence with one advantage per sequence, "
                         "but process_coef > 0 gives each token its own advantage: use clip_mode=gspo_token")
