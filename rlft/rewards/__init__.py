"""Reward components: each file defines one (its config section and how it scores a rollout).

A run's reward is a weighted list of components (`reward.components` in the config), run by
the reward actors and combined by `rlft.rewards.base.combine`. Adding a component is one file
plus one line here.
"""

from __future__ import annotations

from rlft.registry import Registry

REWARD_COMPONENTS: Registry = Registry("reward component", {
    "answer": "rlft.rewards.answer:SPEC",
    "steps": "rlft.rewards.steps:SPEC",
    "progress": "rlft.rewards.progress:SPEC",
    "budget": "rlft.rewards.budget:SPEC",
    "dna_oracle": "rlft.rewards.dna_oracle:SPEC",
    "retrieval_progress": "rlft.rewards.retrieval_progress:SPEC",
    "answer_f1": "rlft.rewards.answer_f1:SPEC",
    "reward_model": "rlft.rewards.reward_model:SPEC",
})
