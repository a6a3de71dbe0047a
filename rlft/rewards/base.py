"""What a reward component is, and how a run's components combine into one `Score`.

A component is built once per reward actor from its config section and the task, and maps a
rollout to a value (and optionally one value per segment of the rollout: steps, turns). The
reward is sum_k weight_k * value_k, and the step rewards sum_k segment_weight_k * step values_k;
each component's unweighted value is kept by name so the controller can log it (`reward/<name>`). Correctness always comes from the task's answer checker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pydantic import Field

from rlft.schema import Section
from rlft.types import Rollout, Score


class ComponentConfig(Section):
    """Fields every component has; a component's own section adds its options."""

    name: str = Field(description="Registered component name.")
    weight: float = Field(1.0, description="Weight of this component in the summed reward.")
    segment_weight: float | None = Field(
        None, description="Weight of its per-step values in the step rewards (None: `weight`); e.g. weight 0 and "
        "segment_weight 1 give step rewards without adding to the sequence reward."
    )


@dataclass
class ComponentValue:
    value: float
    segment_values: list[float] | None = None


class RewardComponent(Protocol):
    def __call__(self, rollout: Rollout) -> ComponentValue:
        """Score one rollout. A component with `per_group = True` is instead called with the rollouts
        of one group (one prompt) and returns one value each: group-relative rewards (length shaping);
        one with `batched = True` is called once with every rollout of the batch and returns one value
        each (a model that scores in batches)."""


@dataclass(frozen=True)
class ComponentSpec:
    """Registration record: the config section and a builder (config, task) -> component."""

    name: str
    config_cls: type[ComponentConfig]
    build: Callable[[Any, Any], RewardComponent]
    scores_segments: bool = False  # gives one value per step/turn segment (what process advantages need)


def component_values(rollouts: list[Rollout], component: RewardComponent) -> list[ComponentValue]:
    """One value per rollout: rollout by rollout, group by group for a per-group component, or all at
    once for a batched one."""
    if getattr(component, "batched", False):
        found = component(rollouts)
        if len(found) != len(rollouts):
            raise ValueError(f"a batched reward component returned {len(found)} values for {len(rollouts)} rollouts")
        return list(found)
    if not getattr(component, "per_group", False):
        return [component(r) for r in rollouts]
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rollouts):
        groups.setdefault(r.group, []).append(i)
    values: list[ComponentValue | None] = [None] * len(rollouts)
    for members in groups.values():
        found = component([rollouts[i] for i in members])
        if len(found) != len(members):
            raise ValueError(f"a per-group reward component returned {len(found)} values for {len(members)} rollouts")
        for i, value in zip(members, found):
            values[i] = value
    return values


def combine_values(values: list[tuple[ComponentConfig, ComponentValue]], correct: bool) -> Score:
    """Weighted sum of component values; segment rewards summed over components that give them."""
    total, named, segments = 0.0, {}, None
    for cfg, out in values:
        total += cfg.weight * out.value
        named[cfg.name] = out.value
        if out.segment_values is not None:
            weight = cfg.weight if cfg.segment_weight is None else cfg.segment_weight
            weighted = [weight * v for v in out.segment_values]
            if segments is None:
                segments = weighted
            elif len(segments) != len(weighted):
                raise ValueError(f"reward component {cfg.name!r} gives {len(weighted)} segment values, "
                                 f"another component gave {len(segments)}")
            else:
                segments = [a + b for a, b in zip(segments, weighted)]
    return Score(reward=total, correct=correct, components=named, segment_rewards=segments)


def combine(rollout: Rollout, components: list[tuple[ComponentConfig, RewardComponent]], correct: bool) -> Score:
    """The Score of one rollout from per-rollout components."""
    return combine_values([(cfg, component(rollout)) for cfg, component in components], correct)


def score_rollouts(rollouts: list[Rollout], components: list[tuple[ComponentConfig, RewardComponent]],
                   correct: list[bool]) -> list[Score]:
    """Scores of a batch whose groups are whole (per-group components see every member)."""
    per_component = [component_values(rollouts, component) for _, component in components]
    return [combine_values([(cfg, values[i]) for (cfg, _), values in zip(components, per_component)], ok)
            for i, ok in enumerate(correct)]
