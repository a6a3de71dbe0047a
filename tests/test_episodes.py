"""Multi-turn retrieval episodes (spec 7): the episode runner with fake roles, observation tokens
carrying no gradient through GPPO (autograd), and the progress-tracker and answer rewards."""

from __future__ import annotations

import pytest
import torch

from rlft.algorithms.base import StepCounts, count_label_tokens
from rlft.algorithms.gppo import GPPOConfig, micro_batch_loss
from rlft.data.jsonl import Example
from rlft.retrieval.episodes import TurnSample, run_episodes
from rlft.rewards.answer_f1 import AnswerF1, AnswerF1Config
from rlft.rewards.retrieval_progress import RetrievalProgress, RetrievalProgressConfig
from rlft.rollouts import pad_rollout_rows, rollout_row
from rlft.types import Rollout, Segment


def _encode(text: str) -> list[int]:
    return [ord(c) % 50 for c in text]


def _scripted(turns_by_prompt: dict[int, list[str]]):
    """sample_turns that plays each prompt's scripted turns in order (prompt id = its first token)."""
    played: dict[int, int] = {}

    def sample_turns(contexts):
        out = []
        for context in contexts:
            k = played.get(context[0], 0)
            played[context[0]] = k + 1
            text = turns_by_prompt[context[0]][k]
            out.append(TurnSample(_encode(text), [-0.5] * len(text), text))
        return out

    return sample_turns


DOCS = {"tesk": [{"id": 3, "text": "Bavo lives in Tesk."}], "orvan": [{"id": 7, "text": "Tesk is in Orvan."}]}


def _search(queries):
    return [DOCS.get(q.lower(), []) for q in queries]


def test_episodes_alternate_turns_and_observations_and_end_with_a_reason():
    turns = {1: ["<search>tesk</search>", "<search>orvan</search>", "<answer>Orvan</answer>"],
             2: ["I think <serch>", "never played"],
             3: ["<search>tesk</search>", "<search>tesk</search>", "<search>orvan</search>"]}
    episodes = run_episodes([[1, 9], [2, 9], [3, 9]], _scripted(turns), _search, _encode, max_turns=2)
    answered, malformed, limited = episodes
    assert answered.finish_reason == "answer" and answered.answer == "Orvan"
    assert [s.kind for s in answered.segments] == ["turn", "observation", "turn", "observation", "turn"]
    assert answered.retrieved == [[3], [7]]
    # segments tile the completion; observation tokens have no sampling log-prob
    assert answered.segments[-1].end == len(answered.completion_ids) == len(answered.logprobs)
    obs = answered.segments[1]
    assert answered.logprobs[obs.start:obs.end] == [0.0] * (obs.end - obs.start)
    assert answered.completion_ids[obs.start:obs.end] == _encode(obs.text) and "Bavo lives in Tesk." in obs.text
    assert malformed.finish_reason == "malformed: no <search> or <answer> tag" and malformed.retrieved == []
    assert limited.finish_reason == "max_turns" and limited.retrieved == [[3], [3]]


def _rollout(segments, completion_len, supporting=(3, 7), retrieved=(), answer=None, gold="Orvan"):
    example = Example(prompt="q", response=None, answer=gold, meta={"supporting": list(supporting)})
    return Rollout(example=example, group=0, prompt_ids=[1, 2], completion_ids=list(range(5, 5 + completion_len)),
                   logprobs=[-0.5] * completion_len, text="", version=0, segments=segments,
                   info={"retrieved": [list(r) for r in retrieved], "answer": answer})


SEGMENTS = [Segment(0, 2, "turn"), Segment(2, 4, "observation"), Segment(4, 6, "turn"), Segment(6, 8, "observation"),
            Segment(8, 10, "turn")]


def test_turn_rewards_sum_to_the_coverage_gain_and_covered_evidence_earns_nothing():
    progress = RetrievalProgress(RetrievalProgressConfig(), None)
    found = progress(_rollout(SEGMENTS, 10, retrieved=[[3], [7]]))
    assert found.segment_values == [0.5, 0.0, 0.5, 0.0, 0.0] and found.value == pytest.approx(1.0)  # P_T - P_0
    again = progress(_rollout(SEGMENTS, 10, retrieved=[[3], [3, 9]]))  # the second search finds only covered evidence
    assert again.segment_values[2] == 0.0 and again.value == pytest.approx(0.5)
    costly = RetrievalProgress(RetrievalProgressConfig(turn_cost=0.1), None)(_rollout(SEGMENTS, 10, retrieved=[[3], [7]]))
    assert costly.segment_values == pytest.approx([0.4, 0.0, 0.4, 0.0, 0.0])


def test_answer_reward_is_token_f1_or_exact_match():
    assert AnswerF1(AnswerF1Config(), None)(_rollout([], 1, answer="the Orvan")).value == 1.0
    assert AnswerF1(AnswerF1Config(), None)(_rollout([], 1, answer="Orvan Tesk")).value == pytest.approx(2 / 3)
    assert AnswerF1(AnswerF1Config(metric="exact_match"), None)(_rollout([], 1, answer="Orvan Tesk")).value == 0.0
    assert AnswerF1(AnswerF1Config(), None)(_rollout([], 1, answer=None)).value == 0.0  # never answered


class _LeafLogits:
    """A policy whose logits are one leaf tensor, so autograd shows each position's gradient."""

    def __init__(self, batch, vocab=32):
        torch.manual_seed(0)
        self.leaf = torch.randn(*batch["input_ids"].shape, vocab, requires_grad=True)
        self.reference = torch.randn(*batch["input_ids"].shape, vocab)

    def logits(self, batch):
        return self.leaf

    def reference_logits(self, batch):
        return self.reference


def test_observation_tokens_get_no_policy_gradient_and_no_kl():
    rollout = _rollout(SEGMENTS, 10)
    rollout.completion_ids = [i % 32 for i in range(10)]
    row = rollout_row(rollout, 1.0, 1.0, max_length=64)
    batch = pad_rollout_rows([row], pad_id=0)
    model = _LeafLogits(batch)
    loss, _ = micro_batch_loss(model, batch, GPPOConfig(kl_coef=0.1), StepCounts(*count_label_tokens(batch)))
    loss.backward()
    per_position = model.leaf.grad[0].abs().sum(-1)  # position t predicts input token t + 1
    prompt = len(rollout.prompt_ids)
    observed = {k for s in SEGMENTS if s.kind == "observation" for k in range(s.start, s.end)}
    for k in range(10):
        predicting = per_position[prompt + k - 1]
        assert (predicting == 0) == (k in observed), k
