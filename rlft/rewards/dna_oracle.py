"""A diffusion reward: a DNA cell-type oracle's score of a designed sequence (reward_models).

The component scores the sequences of one group in one batch. In DRAKES runs the reward actors
hold the held-out evaluation oracle (the fine-tuning oracle lives in the learners), so what they
report is never the quantity the policy was optimised against.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlft.rewards.base import ComponentConfig, ComponentSpec, ComponentValue
from rlft.types import Rollout


class DnaOracleConfig(ComponentConfig):
    name: Literal["dna_oracle"] = "dna_oracle"
    oracle: str = Field("eval", description='"eval", "ft" (the shipped oracles) or an oracle folder (reward_models).')


class DnaOracleReward:
    per_group = True  # one forward pass over a group's sequences

    def __init__(self, cfg: DnaOracleConfig, task):
        from reward_models.dna_oracle import load_oracle

        self.oracle = load_oracle(cfg.oracle).eval()

    def __call__(self, rollouts: list[Rollout]) -> list[ComponentValue]:
        import torch

        from rlft.data.dna import encode, one_hot

        with torch.no_grad():
            values = self.oracle.reward(one_hot(encode([r.text for r in rollouts])))
        return [ComponentValue(float(v)) for v in values]


SPEC = ComponentSpec("dna_oracle", DnaOracleConfig, DnaOracleReward)
