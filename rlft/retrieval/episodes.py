"""Multi-turn retrieval episodes: the model asks, the environment answers, until the model answers.

    prompt | turn 1: "<search>q1</search>" | observation: "<docs>...</docs>" | turn 2: ... | "<answer>a</answer>"

Every episode of a batch advances one turn per round: the model's turns of all open episodes are
sampled together (`sample_turns`, a generator call), their queries searched together (`search`,
the environment role), and each observation's tokens are appended to its episode's completion as
an `observation` segment, with no sampling log-prob (the learner gives such tokens no loss,
rlft.rollouts.rollout_row). An episode ends on an answer, on a malformed turn (the reason is kept
in `finish_reason` and logged), or after `max_turns` searches.

The orchestration is pure: the callables are the only way out, so the runner is tested with fakes
and driven by the generator and environment roles in a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from rlft.retrieval.episode import (ANSWER_CLOSE, SEARCH_CLOSE, Answer, Malformed, Search, coverage,
                                    format_observation, parse_turn)
from rlft.types import Rollout, Segment

log = logging.getLogger(__name__)

TURN_STOP = [SEARCH_CLOSE, ANSWER_CLOSE]  # a turn ends with its closing tag (vLLM stop strings, kept in the output)


@dataclass
class TurnSample:
    """One sampled turn of the model: token ids, their sampling log-probs, and the decoded text."""

    ids: list[int]
    logprobs: list[float]
    text: str


@dataclass
class Episode:
    """The completion of one prompt so far: tokens, segments, and what was retrieved at each turn."""

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    text: str = ""
    retrieved: list[list[int]] = field(default_factory=list)  # document ids per search turn
    answer: str | None = None
    finish_reason: str | None = None  # "answer", "max_turns" or "malformed: <reason>"

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.completion_ids

    def append(self, ids: list[int], logprobs: list[float], text: str, kind: str) -> None:
        start = len(self.completion_ids)
        self.completion_ids += ids
        self.logprobs += logprobs
        self.segments.append(Segment(start, len(self.completion_ids), kind, text))
        self.text += text


def run_episodes(prompts: list[list[int]], sample_turns: Callable[[list[list[int]]], list[TurnSample]],
                 search: Callable[[list[str]], list[list[dict]]], encode: Callable[[str], list[int]],
                 max_turns: int) -> list[Episode]:
    """Episodes for tokenised prompts; `search` returns documents {"id", "text", ...} per query."""
    episodes = [Episode(list(p)) for p in prompts]
    open_ = list(range(len(episodes)))
    for turn in range(max_turns + 1):  # max_turns searches, then one last chance to answer
        if not open_:
            break
        turns = sample_turns([episodes[i].context for i in open_])
        searching: list[tuple[int, str]] = []
        for i, sampled in zip(open_, turns):
            episode = episodes[i]
            episode.append(sampled.ids, sampled.logprobs, sampled.text, "turn")
            parsed = parse_turn(sampled.text)
            if isinstance(parsed, Answer):
                episode.answer, episode.finish_reason = parsed.text, "answer"
            elif isinstance(parsed, Malformed):
                episode.finish_reason = f"malformed: {parsed.reason}"
                log.info("episode %d ended at turn %d: %s", i, turn + 1, parsed.reason)
            elif isinstance(parsed, Search) and turn < max_turns:
                searching.append((i, parsed.query))
            else:
                episode.finish_reason = "max_turns"
        found = search([query for _, query in searching]) if searching else []
        for (i, _), documents in zip(searching, found):
            observation = format_observation([d["text"] for d in documents])
            ids = encode(observation)
            episodes[i].append(ids, [0.0] * len(ids), observation, "observation")
            episodes[i].retrieved.append([d["id"] for d in documents])
        open_ = [i for i, _ in searching]
    return episodes


def episode_metrics(rollouts: list[Rollout], prefix: str) -> dict[str, float]:
    """Searches per episode, how episodes ended, and the evidence covered at the end."""
    n = len(rollouts)
    ended = [r.finish_reason or "" for r in rollouts]
    covered = [coverage({i for ids in r.info["retrieved"] for i in ids}, tuple(r.example.meta.get("supporting", ())))
               for r in rollouts]
    return {f"{prefix}/searches": sum(len(r.info["retrieved"]) for r in rollouts) / n,
            f"{prefix}/answered": sum(e == "answer" for e in ended) / n,
            f"{prefix}/malformed": sum(e.startswith("malformed") for e in ended) / n,
            f"{prefix}/coverage": sum(covered) / n}
