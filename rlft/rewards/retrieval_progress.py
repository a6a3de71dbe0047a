"""Progress tracker for retrieval episodes (docs/algorithms.md#coverage-reward): per-turn evidence coverage gains.

P_t is the fraction of the question's gold supporting documents (`example.meta["supporting"]`)
retrieved by the first t searches (`rollout.info["retrieved"]`, rlft.retrieval.episodes). A
search turn's value is P_t - P_{t-1} - turn_cost; the final (answering or malformed) turn and
observation segments get 0. Summed over the turns, the values telescope to P_T - P_0 - cost x
searches: a turn that retrieves only evidence already covered earns nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlft.retrieval.episode import coverage, turn_rewards
from rlft.rewards.base import ComponentConfig, ComponentSpec, ComponentValue
from rlft.types import Rollout


class RetrievalProgressConfig(ComponentConfig):
    name: Literal["retrieval_progress"] = "retrieval_progress"
    turn_cost: float = Field(0.0, ge=0, description="Subtracted from every search turn's reward (shorter episodes).")


def coverages(retrieved: list[list[int]], supporting: tuple[int, ...]) -> list[float]:
    """[P_0, P_1, ..., P_T]: coverage before any search and after each one."""
    seen: set[int] = set()
    found = [coverage(seen, supporting)]
    for ids in retrieved:
        seen |= set(ids)
        found.append(coverage(seen, supporting))
    return found


class RetrievalProgress:
    def __init__(self, cfg: RetrievalProgressConfig, task):
        self.turn_cost = cfg.turn_cost

    def __call__(self, rollout: Rollout) -> ComponentValue:
        supporting = tuple(rollout.example.meta.get("supporting", ()))
        gains = iter(turn_rewards(coverages(rollout.info.get("retrieved", []), supporting), self.turn_cost))
        segments = rollout.segments
        values = []
        for k, segment in enumerate(segments):
            # a search turn is a turn followed by its observation; the final turn never searched
            searched = segment.kind == "turn" and k + 1 < len(segments) and segments[k + 1].kind == "observation"
            values.append(next(gains) if searched else 0.0)
        return ComponentValue(sum(values), values)

SPEC = ComponentSpec("retrieval_progress", RetrievalProgressConfig, RetrievalProgress, scores_segments=True)
