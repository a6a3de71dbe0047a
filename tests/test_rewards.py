"""Reward components: registration, weighted combination, segment rewards, config errors."""

from typing import Literal

import pytest

from rlft.config import ConfigError
from rlft.data.arith import make_example
from rlft.rewards import REWARD_COMPONENTS
from rlft.rewards.base import ComponentConfig, ComponentSpec, ComponentValue, combine
from rlft.roles.reward import RewardActor
from rlft.types import Rollout, Segment
from tests.helpers import tiny_config


def _rollout(text: str) -> Rollout:
    return Rollout(make_example(47, 38), 0, [1], [2], [-1.0], text, 0)


def test_reward_actor_sums_weighted_components_and_keeps_each_value(tmp_path):
    """47+38: the completion gets column 1 right (7+8=15), column 2 wrong, answer wrong:
    answer = 0, steps = mean([1, 0, 0]) = 1/3; reward = 1 * 0 + 0.5 * 1/3 = 1/6."""
    cfg = tiny_config(tmp_path, algorithm={"name": "gppo"},
                      reward={"components": [{"name": "answer"}, {"name": "steps", "weight": 0.5}]})
    actor = RewardActor(cfg, 0)
    assert actor.setup()["components"] == ["answer", "steps"]
    [wrong, right] = actor.score([_rollout("7+8=15\n4+3=7\nA: 75"), _rollout("7+8=15\n4+3+1=8\nA: 85")])
    assert wrong.components == pytest.approx({"answer": 0.0, "steps": 1 / 3})
    assert wrong.reward == pytest.approx(1 / 6) and not wrong.correct
    assert right.reward == pytest.approx(1.5) and right.correct


class HalfConfig(ComponentConfig):
    name: Literal["per_segment"] = "per_segment"


class PerSegment:
    """A component defined here: 0.5 for every segment, sequence value = their sum."""

    def __init__(self, cfg, task):
        pass

    def __call__(self, rollout):
        return ComponentValue(0.5 * len(rollout.segments), [0.5] * len(rollout.segments))


def test_a_component_registered_elsewhere_plugs_in_with_segment_rewards(tmp_path):
    REWARD_COMPONENTS.register("per_segment", ComponentSpec("per_segment", HalfConfig, PerSegment), replace=True)
    try:
        cfg = tiny_config(tmp_path, reward={"components": [{"name": "per_segment", "weight": 2.0}]})
        component = REWARD_COMPONENTS["per_segment"].build(cfg.reward.components[0], None)
        rollout = _rollout("")
        rollout.segments = [Segment(0, 1), Segment(1, 1, "turn")]
        score = combine(rollout, [(cfg.reward.components[0], component)], correct=False)
        assert score.reward == pytest.approx(2.0) and score.segment_rewards == [1.0, 1.0]
    finally:
        REWARD_COMPONENTS.unregister("per_segment")


def test_unknown_component_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown reward component name 'anwser' at key 'reward.components.0.name' "
                                          r"\(did you mean 'answer'\?\)"):
        tiny_config(tmp_path, reward={"components": [{"name": "anwser"}]})
