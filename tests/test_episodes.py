"""Multi-turn retrieval episodes (docs/algorithms.md#im-rag-episodes): the episode runner with fake
roles, observation tokens carrying no gradient through GPPO (autograd), and the progress-tracker
and answer rewards."""

from __future__ import annotations

import pytest
import torch

from rlft.algorithms.base import StepCounts, count_label_tokens
from rlft.algorithms.gppo import GPPOConfig, micro_batch_loss
from rlft.retrieval.episodes import TurnSample, run_episodes
from rlft.rewards.answer_f1 import AnswerF1, AnswerF1Config
from rlft.rewards.retrieval_progress import RetrievalProgress, RetrievalProgressConfig
from rlft.rollouts import pad_rollout_rows, rollout_row
from rlft.types import Example, Rollout, Segment


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


# ---- the answerer: SFT on the gold answer after the episode's own searches (IM-RAG) --------------


class _CharTokenizer:
    """One token per character (id = code point), so token offsets are text offsets."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


def _episode(turns: list[tuple[str, str]], finish_reason: str, reward: float) -> Rollout:
    """A scored rollout whose completion is the (kind, text) segments, one token per character."""
    from rlft.types import Score

    segments, ids = [], []
    for kind, text in turns:
        segments.append(Segment(len(ids), len(ids) + len(text), kind, text))
        ids += [ord(c) for c in text]
    example = Example(prompt="q", response=None, answer="Orvan", meta={"supporting": [3, 7]})
    return Rollout(example=example, group=0, prompt_ids=[1, 2], completion_ids=ids, logprobs=[-0.5] * len(ids),
                   text="".join(t for _, t in turns), version=0, finish_reason=finish_reason, segments=segments,
                   score=Score(reward=reward, correct=reward > 0))


def test_answered_episode_keeps_its_answer_decision_and_learns_the_gold_answer_by_nll():
    from rlft.algorithms.base import RowContext
    from rlft.algorithms.gppo_episodes import GPPOEpisodesConfig, build_episode_rows

    search, docs = ("turn", "<search>tesk</search>"), ("observation", "<docs>Tesk is in Orvan.</docs>")
    answered = _episode([search, docs, ("turn", " <answer>Kern</answer>")], "answer", 1.0)
    malformed = _episode([search, docs, ("turn", "<serch>")], "malformed: no <search> or <answer> tag", 0.0)
    unsupported = _episode([search, ("observation", "<docs>Tesk is in Kern.</docs>"), ("turn", "<answer>Kern</answer>")],
                           "answer", 0.0)
    ctx = RowContext(tokenizer=_CharTokenizer(), chat=False, max_length=128,
                     algorithm=GPPOEpisodesConfig(group_size=2))
    (row, other, guessed), metrics = build_episode_rows([answered, malformed, unsupported], ctx)
    decision = len(answered.prompt_ids) + answered.text.index("<answer>") + len("<answer>")
    gold = [ord(c) for c in "Orvan</answer>"]
    # the sampled turns up to and including "<answer>" stay (policy gradient), the gold answer follows
    assert row["input_ids"] == answered.prompt_ids + answered.completion_ids[:decision - 2] + gold
    assert row["labels"][decision:] == gold
    assert row["answer_sft"] == [0.0] * (decision - 1) + [1.0] * len(gold)  # positions predicting the gold tokens
    assert row["advantages"][decision - 1:] == [0.0] * len(gold)
    assert row["advantages"][decision - 2] > 0 and row["advantages"][len(answered.prompt_ids) - 1] > 0
    assert len(row["old_logprobs"]) == len(row["advantages"]) == len(row["input_ids"]) - 1
    assert other["answer_sft"] == [0.0] * (len(other["input_ids"]) - 1)  # no answer, nothing to teach
    assert other["input_ids"] == malformed.prompt_ids + malformed.completion_ids
    # its documents do not hold the gold answer: it would teach answering without them
    assert guessed["input_ids"] == unsupported.prompt_ids + unsupported.completion_ids and not any(guessed["answer_sft"])
    assert metrics["rollout/answer_sft_fraction"] == pytest.approx(1 / 3)
    rl = RowContext(tokenizer=_CharTokenizer(), chat=False, max_length=128,
                    algorithm=GPPOEpisodesConfig(group_size=2, answerer="rl"))
    (sampled, _, _), _ = build_episode_rows([answered, malformed, unsupported], rl)
    assert sampled["input_ids"] == answered.prompt_ids + answered.completion_ids and "answer_sft" not in sampled


def test_a_token_across_the_answer_tag_is_cut_and_the_gold_tokens_repeat_the_rest_of_the_tag():
    from rlft.algorithms.gppo_episodes import answer_start

    class Pairs:  # two characters per token: "<a", "ns", "we", "r>", ...
        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i // 1000) + chr(i % 1000) for i in ids)

    text = " <answer>Kern</answer>"  # " <", "an", "sw", "er", ">K" straddles the tag's end
    ids = [ord(text[k]) * 1000 + ord(text[k + 1]) for k in range(0, len(text), 2)]
    rollout = _episode([("observation", "<docs>Orvan</docs>")], "answer", 1.0)  # one token per character
    rollout.completion_ids += ids
    rollout.segments.append(Segment(18, 18 + len(ids), "turn", text))
    assert answer_start(rollout, Pairs().decode) == (18 + 4, ">")
    rollout.finish_reason = "max_turns"
    assert answer_start(rollout, Pairs().decode) is None


def test_answer_nll_is_the_only_loss_when_advantages_are_zero_and_observations_get_no_gradient():
    from rlft.algorithms.gppo_episodes import GPPOEpisodesConfig, micro_batch_loss as episode_loss, pad_episode_rows, \
        with_gold_answer

    rollout = _rollout(SEGMENTS, 10)
    rollout.completion_ids = [i % 32 for i in range(10)]
    gold = [20, 21, 22]
    row = with_gold_answer(rollout_row(rollout, 0.0, 0.0, max_length=64), 2, SEGMENTS[-1].start, gold, 64)
    batch = pad_episode_rows([row, {**row, "answer_sft": [0.0] * len(row["answer_sft"])}], pad_id=0)
    model = _LeafLogits(batch)
    counts = StepCounts(*count_label_tokens(batch))
    loss, metrics = episode_loss(model, batch, GPPOEpisodesConfig(answer_sft_coef=0.5), counts)
    log_p = torch.log_softmax(model.leaf[0].detach(), -1)
    keep = 2 + SEGMENTS[-1].start
    expected = -sum(float(log_p[keep - 1 + j, g]) for j, g in enumerate(gold)) * 0.5 / counts.num_tokens
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5) and metrics["answer_tokens"] == 3
    loss.backward()
    grad = model.leaf.grad.abs().sum(-1)
    assert (grad[1] == 0).all()  # the second row has no answer to learn and no advantage
    assert [k for k in range(grad.shape[1]) if grad[0, k] > 0] == [keep - 1, keep, keep + 1]
