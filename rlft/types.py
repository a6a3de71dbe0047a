"""What crosses role boundaries: task examples, rollouts (generator -> reward -> learner) and their scores.

Plain dataclasses: no torch, no engine objects, so they pickle cheaply through Ray and read the
same in every run mode.

Segments are token spans of a completion, `[start, end)` in completion-token offsets: the steps
of a reasoning trace, the turns of a multi-turn episode, or observation spans (text a tool or
environment inserted) that must carry no policy gradient and no KL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SegmentKind = Literal["step", "turn", "observation"]


@dataclass(frozen=True)
class Example:
    """One task item: what the model sees, a reference response, and what the checker wants."""

    prompt: str  # question text as the model sees it (no chat template applied)
    response: str | None  # worked reference response for SFT (None if the task has none)
    answer: str | None  # final answer the checker compares against
    meta: dict = field(default_factory=dict)  # task-specific extras (operands, source entry, ...)


@dataclass(frozen=True)
class Segment:
    """A span [start, end) of completion tokens, with their text when the source knows it."""

    start: int
    end: int
    kind: SegmentKind = "step"
    text: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"segment [{self.start}, {self.end}) is not a valid span")


@dataclass
class Score:
    """What the reward actors say about one rollout.

    `reward` is the weighted sum of the named `components` (each component's own value, before
    weighting, is kept for logging). `segment_rewards` (one per rollout segment, optional) is for
    per-step / per-turn credit; `correct` is the task checker's verdict, used for accuracy.
    """

    reward: float
    correct: bool
    components: dict[str, float] = field(default_factory=dict)
    segment_rewards: list[float] | None = None


@dataclass
class Rollout:
    """One sampled completion of one prompt, with everything needed to score and train on it."""

    example: Example
    group: int                  # explicit group id: rollouts of the same prompt share it
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]       # sampling log-probs of completion_ids (of each token under the version that sampled it)
    text: str
    version: int                # policy version that began it (the oldest of its tokens' versions)
    finish_reason: str | None = None
    segments: list[Segment] = field(default_factory=list)
    score: Score | None = None
    temperature: float = 1.0    # sampling temperature: `logprobs` are of pi(.)^(1/T), renormalised
    info: dict = field(default_factory=dict)  # what an environment reported (e.g. documents retrieved per turn)
    # the version of each completion token, where a weight update arrived while it was sampled
    # (rollout.in_flight_updates); empty: every token is `version`'s
    token_versions: list[int] = field(default_factory=list)

    @property
    def reward(self) -> float:
        return self.scored.reward

    @property
    def correct(self) -> bool:
        return self.scored.correct

    @property
    def scored(self) -> Score:
        if self.score is None:
            raise ValueError("rollout has not been scored yet")
        return self.score
