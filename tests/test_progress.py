"""Progress tracker (mid-step rewards) and process advantages for GPPO (docs/algorithms.md#process-advantages)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import AutoTokenizer

from rlft.algorithms.base import RowContext
from rlft.algorithms.gppo import GPPOConfig, build_rows, micro_batch_loss
from rlft.algorithms.base import StepCounts
from rlft.control import Controller, train
from rlft.data.arith import make_example
from rlft.data.model_config import ModelConfig
from rlft.data.models import resolve_model
from rlft.data.steps import completion_steps
from rlft.ops.advantages import process_step_advantages
from rlft.rewards.base import combine
from rlft.rewards.progress import ProgressConfig, ProgressReward, step_rewards
from rlft.rollouts import pad_rollout_rows, process_token_advantages, token_values_from_steps
from rlft.data.tasks import build_task
from rlft.data.arith import ArithConfig
from rlft.types import Rollout, Score, Segment
from tests.helpers import rl_config

EXAMPLE = make_example(47, 38)  # columns 7+8=15, 4+3+1=8; answer 85
GOOD = "7+8=15\n4+3+1=8\nA: 85"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(ModelConfig(name="tiny")))


@pytest.fixture(scope="module")
def progress():
    return ProgressReward(ProgressConfig(), build_task(ArithConfig()))


def _rollout(tokenizer, text: str, group: int = 0) -> Rollout:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return Rollout(EXAMPLE, group, [1, 2], ids, [-0.5] * len(ids), text, 0, "stop", completion_steps(tokenizer, ids, "\n"))


# ---------------------------------------------------------------- the tracker


def test_step_segments_carry_their_text(tokenizer):
    rollout = _rollout(tokenizer, GOOD)
    assert [s.text for s in rollout.segments] == ["7+8=15\n", "4+3+1=8\n", "A: 85"]
    assert "".join(s.text for s in rollout.segments) == GOOD


@pytest.mark.parametrize("text, expected", [
    (GOOD, [1 / 3, 1 / 3, 1 / 3]),                           # every step adds one of the 3 needed results
    ("7+8=15\n4+3=7\nA: 75", [1 / 3, 0.0, 0.0]),             # a dropped carry: no progress after the first column
    ("7+8=15\n7+8=15\n4+3+1=8\nA: 85", [1 / 3, 0.0, 0.0, 1 / 3]),  # a repeated line is no progress (and misplaces the next)
    ("4+3+1=8\n7+8=15\nA: 85", [0.0, 0.0, 1 / 3]),           # right lines in the wrong order: only the answer counts
])
def test_step_rewards_are_potential_differences_summing_to_the_final_progress(tokenizer, progress, text, expected):
    rollout = _rollout(tokenizer, text)
    value = progress(rollout)
    assert value.segment_values == pytest.approx(expected)
    assert sum(value.segment_values) == pytest.approx(value.value)  # P_0 = 0 for arith: sum = final progress
    score = combine(rollout, [(ProgressConfig(weight=2.0), progress)], correct=True)
    assert score.segment_rewards == pytest.approx([2 * v for v in expected])


def test_a_rollout_without_segments_gets_one_value():
    task = build_task(ArithConfig())
    value = ProgressReward(ProgressConfig(), task)(Rollout(EXAMPLE, 0, [1], [5], [-1.0], GOOD, 0))
    assert value.value == pytest.approx(1.0) and value.segment_values is None


def test_observation_progress_is_credited_to_the_step_that_asked_for_it():
    # potential = number of "x" in the prefix / 3: the observation brings two of them
    segments = [Segment(0, 1, "step", "a"), Segment(1, 2, "observation", "xx"), Segment(2, 3, "step", "x")]
    rewards, final = step_rewards(lambda ex, prefix: prefix.count("x") / 3, None, segments)
    assert rewards == pytest.approx([2 / 3, 0.0, 1 / 3]) and final == pytest.approx(1.0)


# ---------------------------------------------------------------- process advantages


def test_process_advantages_match_a_hand_computed_two_step_example():
    # group R = {0.5, 0.5, 0.5, 0}: mean 0.375, unbiased std 0.25 -> normalised 0.5 and -1.5
    per_step = process_step_advantages([[0.5, 0.5], [0.5, 0.0]], [0, 0], eps=0.0)
    assert per_step == [pytest.approx([1.0, 0.5]), pytest.approx([-1.0, -1.5])]
    # groups are normalised apart; equal step rewards give zero advantage
    assert process_step_advantages([[1.0, 1.0], [0.2]], [0, 1]) == [pytest.approx([0.0, 0.0]), pytest.approx([0.2 / (1 + 1e-6)])]
    # tokens take their step's advantage
    segments = [Segment(0, 2), Segment(2, 3)]
    assert token_values_from_steps(segments, [1.0, 0.5], 4) == [1.0, 1.0, 0.5, 0.0]


def test_gppo_rows_mix_outcome_and_process_advantages_per_token(tokenizer):
    texts = [GOOD, "7+8=15\n4+3=7\nA: 75"]  # step rewards [1/3, 1/3, 1/3] and [1/3, 0, 0]
    rollouts = [_rollout(tokenizer, t) for t in texts]
    task = build_task(ArithConfig())
    for r in rollouts:
        r.score = combine(r, [(ProgressConfig(), ProgressReward(ProgressConfig(), task))], correct=True)
    # Outcome: rewards 1 and 1/3, mean 2/3, unbiased std sqrt(2 * (1/3)^2 / 1) = sqrt(2)/3 -> +-1/sqrt(2).
    # Process: the group's six step rewards R = {1/3 x4, 0 x2}: mean 2/9, deviations +1/9 (x4) and -2/9 (x2),
    #   unbiased var (4/81 + 8/81) / 5 = 4/135, std 2 / (3 sqrt(15)); normalised a = sqrt(15)/6 ~ 0.645497
    #   for a 1/3 and -2a for a 0. Summed from each step to the last:
    #   good  [a, a, a]   -> [3a, 2a, a]    = [1.936492, 1.290994, 0.645497]
    #   other [a, -2a, -2a] -> [-3a, -4a, -2a] = [-1.936492, -2.581989, -1.290994]
    # Mixed, 0.5 * outcome + 2 * process (0.5 / sqrt(2) = 0.353553):
    per_step = [[4.226537, 2.935542, 1.644548], [-4.226537, -5.517531, -2.935542]]
    ctx = RowContext(tokenizer, False, 64, GPPOConfig(group_size=2, outcome_coef=0.5, process_coef=2.0))
    rows, _ = build_rows(rollouts, ctx)
    for row, rollout, steps in zip(rows, rollouts, per_step):
        assert len(rollout.segments) == 3
        expected = [steps[k] for k, s in enumerate(rollout.segments) for _ in range(s.start, s.end)]
        placed = row["advantages"][len(rollout.prompt_ids) - 1:]  # position t predicts completion token t + 1
        assert row["advantages"][:len(rollout.prompt_ids) - 1] == [0.0] * (len(rollout.prompt_ids) - 1)
        # rel 2e-5: the eps = 1e-6 added to each std moves these by ~6e-6 relative
        assert placed == pytest.approx(expected, rel=2e-5)


def test_observation_and_prompt_tokens_carry_no_gradient(tokenizer):
    ids = list(range(5, 11))
    segments = [Segment(0, 2, "step", "a\n"), Segment(2, 4, "observation", "doc"), Segment(4, 6, "step", "b")]
    rollouts = [Rollout(EXAMPLE, 0, [1, 2, 3], ids, [-1.0] * 6, "", 0, "stop", segments,
                        Score(1.0, True, {}, [1.0, 0.0, 0.5])),
                Rollout(EXAMPLE, 0, [1, 2, 3], ids, [-1.0] * 6, "", 0, "stop", segments,
                        Score(0.0, False, {}, [0.0, 0.0, 0.0]))]  # every step's reward-to-go is non-zero
    assert process_token_advantages(rollouts)[0][2:4] == [0.0, 0.0]
    rows, _ = build_rows(rollouts, RowContext(tokenizer, False, 64, GPPOConfig(group_size=2, outcome_coef=0.0, process_coef=1.0)))
    batch = pad_rollout_rows(rows, 0)
    logits = torch.randn(2, batch["input_ids"].shape[1], 50, requires_grad=True)

    class Model:
        def logits(self, _batch):
            return logits

    loss, _ = micro_batch_loss(Model(), batch, GPPOConfig(group_size=2, outcome_coef=0.0, process_coef=1.0),
                               StepCounts(num_tokens=12, num_sequences=2))
    loss.backward()
    per_position = logits.grad.abs().sum(-1)  # [2, T]; position t predicts token t + 1
    prompt, observation = [0, 1], [3 + 2 - 1, 3 + 3 - 1]
    assert per_position[:, prompt].eq(0).all() and per_position[:, observation].eq(0).all()
    assert per_position[:, [3 - 1, 3 + 4 - 1]].gt(0).all()  # step tokens do get a gradient


# ---------------------------------------------------------------- config and the loop


@pytest.mark.parametrize("over, message", [
    ({"algorithm": {"process_coef": 1.0}, "reward": {"components": [{"name": "progress"}]}}, "set rollout.step_delimiter"),
    ({"algorithm": {"process_coef": 1.0}, "rollout": {"step_delimiter": "\n"}}, "add a reward component that scores steps"),
    ({"algorithm": {"outcome_coef": 0.0}}, "no advantage is left"),
])
def test_process_advantages_need_steps_and_step_rewards(tmp_path, over, message):
    with pytest.raises(ValueError, match=message):
        Controller(rl_config(tmp_path, "bad", **over), show_progress=False).setup()
    assert not (tmp_path / "runs" / "bad").exists()


def _advantages_by_definition(rollouts, outcome_coef: float, process_coef: float) -> list[list[float]]:
    """Per completion token, outcome_coef * A_outcome + process_coef * A_process, from the definitions
    (docs/algorithms.md#process-advantages) in plain Python: A_outcome = (r - mean) / (std + 1e-6) over the
    group's rewards (unbiased std); the group's step rewards are normalised the same way over all of its
    steps, a step gets the sum of its own and every later normalised reward, a token its step's value."""
    from statistics import mean, stdev

    out = []
    for r in rollouts:
        group = [o for o in rollouts if o.group == r.group]
        assert len(group) > 1  # a lone rollout has another baseline (mean 0, std 1)
        rewards = [o.reward for o in group]
        outcome = (r.reward - mean(rewards)) / (stdev(rewards) + 1e-6)
        steps = [v for o in group for v in o.scored.segment_rewards]
        normalised = [(v - mean(steps)) / (stdev(steps) + 1e-6) for v in r.scored.segment_rewards]
        tokens = [0.0] * len(r.completion_ids)
        for k, segment in enumerate(r.segments):
            tokens[segment.start:segment.end] = [sum(normalised[k:])] * (segment.end - segment.start)
        out.append([outcome_coef * outcome + process_coef * p for p in tokens])
    return out


def _assert_rows_follow_the_definitions(rows, rollouts, max_length: int) -> None:
    """Prompt positions carry 0; completion token k (at position len(prompt) - 1 + k) carries its
    advantage from _advantages_by_definition (outcome and process weights 1)."""
    for row, rollout, expected in zip(rows, rollouts, _advantages_by_definition(rollouts, 1.0, 1.0), strict=True):
        start = len(rollout.prompt_ids) - 1  # position t predicts completion token t + 1
        assert row["advantages"][:start] == [0.0] * start
        placed = row["advantages"][start:]
        assert len(placed) == min(len(rollout.completion_ids), max_length - len(rollout.prompt_ids))
        assert placed == pytest.approx(expected[:len(placed)], rel=1e-5, abs=1e-5)


def test_gppo_with_process_rewards_runs_with_a_real_generator(tmp_path):
    cfg = rl_config(tmp_path, "process", algorithm={"outcome_coef": 1.0, "process_coef": 1.0},
                    rollout={"step_delimiter": "\n"}, train={"steps": 2},
                    reward={"components": [{"name": "answer"}, {"name": "progress", "weight": 0.0, "segment_weight": 1.0}]})
    ctl = Controller(cfg, show_progress=False)
    seen = []

    def build_rows_seen(items, rctx):
        rows, stats = build(items, rctx)
        seen.append((items, rows))
        return rows, stats

    build = ctl.spec.build_rows
    ctl.spec = dataclasses.replace(ctl.spec, build_rows=build_rows_seen)
    summary = ctl.run()
    assert summary["policy_version"] == 2
    rollouts, rows = seen[0]
    task = build_task(cfg.task)
    for r in rollouts:  # weight 0, segment_weight 1: the sequence reward is the answer, the steps carry progress
        assert r.segments and "".join(s.text for s in r.segments) == r.text
        assert r.reward == r.scored.components["answer"]
        assert sum(r.scored.segment_rewards) == pytest.approx(r.scored.components["progress"])
        assert r.scored.components["progress"] == pytest.approx(sum(task.step_scores(r.example, r.text)) / 3)
    # The rows the learner got hold the advantages that the definitions give for these scores (the
    # untrained tiny model rarely writes a right step: these scores, and so the advantages, are mostly 0).
    assert len(rows) == len(rollouts) and all(s.kind == "step" for r in rollouts for s in r.segments)
    _assert_rows_follow_the_definitions(rows, rollouts, cfg.train.max_length)
    # The same check with scores that vary: the run's rollouts (real step segments) with chosen rewards
    # through the loop's own build_rows and row context (outcome_coef = process_coef = 1 from the config).
    rescored = [dataclasses.replace(r, score=Score(float(i % 2), bool(i % 2), {},
                                                   [((i + k) % 3) / 3 for k in range(len(r.segments))]))
                for i, r in enumerate(rollouts)]
    rescored_rows, _ = build(rescored, ctl.row_ctx)
    _assert_rows_follow_the_definitions(rescored_rows, rescored, cfg.train.max_length)
    assert any(a != 0.0 for row in rescored_rows for a in row["advantages"])
    rows = [json.loads(line) for line in (tmp_path / "runs" / "process" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/progress" in r for r in rows)
