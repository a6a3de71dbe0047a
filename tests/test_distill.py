"""On-policy distillation: the reverse-KL advantage, the teacher role, the algorithm's rows and checks,
and an end-to-end run with a real vLLM generator in which the student moves toward its teacher."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import rl_config, write_tiny_sft_recipe
from rlft.algorithms import ALGORITHMS
from rlft.control import Controller, train
from rlft.data.models import resolve_model
from rlft.ops.distillation import distillation_advantages, reverse_kl_tokens
from rlft.sources.teacher import TEACHER_LOGPROBS, reverse_kl_per_token
from rlft.types import Example, Rollout, Score


def test_reverse_kl_advantage_golden_values():
    # student log-probs (-0.5, -2.0), teacher (-1.0, -0.5): k = s - t = (0.5, -1.5); with coef 2 the
    # advantage -2k = (-1.0, 3.0): the token the teacher likes more than the student did is pushed up.
    # The masked third token gets 0 whatever its log-probs.
    student = torch.tensor([[-0.5, -2.0, -7.0]])
    teacher = torch.tensor([[-1.0, -0.5, -0.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(reverse_kl_tokens(student, teacher, mask), torch.tensor([[0.5, -1.5, 0.0]]))
    torch.testing.assert_close(distillation_advantages(student, teacher, mask, coef=2.0),
                               torch.tensor([[-1.0, 3.0, 0.0]]))
    # a teacher that is the student gives no signal
    assert distillation_advantages(student, student, mask).abs().max() == 0


def test_reverse_kl_estimate_is_the_kl_in_expectation():
    # Over the student's own samples, the mean of log pi_S - log pi_T is KL(pi_S || pi_T) (>= 0); the
    # distributions here: pi_S = (0.7, 0.2, 0.1), pi_T = (0.2, 0.5, 0.3).
    gen = torch.Generator().manual_seed(0)
    p_s, p_t = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    draws = torch.multinomial(p_s, 200_000, replacement=True, generator=gen)
    k = reverse_kl_tokens(p_s.log()[draws], p_t.log()[draws], torch.ones(len(draws)))
    exact = float((p_s * (p_s.log() - p_t.log())).sum())  # 0.7 ln 3.5 + 0.2 ln 0.4 + 0.1 ln(1/3) = 0.8769 - 0.1833 - 0.1099 = 0.5838
    assert exact == pytest.approx(0.5838, abs=1e-4)
    assert float(k.mean()) == pytest.approx(exact, abs=0.01)


def _rollout(prompt_ids, completion_ids, logprobs, teacher, reward=1.0, group=0, temperature=1.0) -> Rollout:
    r = Rollout(Example("p", None, "a"), group, prompt_ids, completion_ids, logprobs, "", 0, temperature=temperature)
    r.score = Score(reward=reward, correct=reward >= 1.0)
    r.info[TEACHER_LOGPROBS] = teacher
    return r


def test_rows_carry_the_teacher_term_plus_the_outcome_term(tmp_path):
    from rlft.algorithms.base import RowContext

    spec = ALGORITHMS["distill"]
    cfg = spec.config_cls(group_size=2, outcome_coef=0.5, teacher_coef=1.0)
    # Two rollouts of one prompt, rewards 1 and 0: GRPO advantages (r - 0.5) / std, std = sqrt(0.5) (unbiased),
    # so +-0.7071; times outcome_coef 0.5: +-0.3536 on every token. Teacher term t - s per token.
    rollouts = [_rollout([5, 6], [7, 8], [-0.5, -1.0], [-0.25, -2.0], reward=1.0),
                _rollout([5, 6], [9], [-3.0], [-1.0], reward=0.0)]
    rows, stats = spec.build_rows(rollouts, RowContext(None, False, 64, cfg))
    # row positions: prompt of 2 tokens, so completion token k sits at shifted position 1 + k
    assert rows[0]["advantages"] == pytest.approx([0.0, 0.25 + 0.35355, -1.0 + 0.35355], abs=1e-4)
    assert rows[1]["advantages"] == pytest.approx([0.0, 2.0 - 0.35355], abs=1e-4)
    assert stats["rollout/teacher_advantage"] == pytest.approx((0.25 + 0.35355 - 1.0 + 0.35355 + 2.0 - 0.35355) / 3,
                                                               abs=1e-4)
    assert reverse_kl_per_token(rollouts) == pytest.approx((-0.25 + 1.0 - 2.0) / 3)


def test_teacher_scores_each_token_as_the_model_reads_its_prefix(tmp_path):
    """The teacher's batched, padded, tempered scores equal a one-prefix-at-a-time reading of the same model."""
    from rlft.families import family_for
    from rlft.roles.teacher import TeacherActor

    cfg = rl_config(tmp_path, "t")
    path = resolve_model(cfg.model)
    teacher = TeacherActor(cfg, 0, str(path), "cpu", "float32")
    teacher.setup()
    rollouts = [_rollout([3, 4, 5], [6, 7, 8, 9], [0.0] * 4, [], temperature=0.7),
                _rollout([3], [10, 11], [0.0] * 2, [], temperature=1.0)]
    found = teacher.logprobs(rollouts)
    model = family_for(path).load_model(path, torch.float32).eval()
    for rollout, scores in zip(rollouts, found):
        expected = []
        for k, token in enumerate(rollout.completion_ids):
            ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids[:k]])
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
            expected.append(float(torch.log_softmax(logits / rollout.temperature, -1)[token]))
        assert scores == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("over, message", [
    ({}, "algorithm distill needs a teacher"),
    ({"teacher": {"model": "tiny"}, "algorithm": {"name": "distill", "group_size": 4, "process_coef": 1.0}},
     "teacher term already scores every token"),
    ({"teacher": {"model": "tiny", "recipe": "x.yaml"}}, "teacher.recipe and teacher.model are both set"),
])
def test_distill_config_errors_name_the_fix(tmp_path, over, message):
    over = {"algorithm": {"name": "distill", "group_size": 4}, **over}
    with pytest.raises(ValueError, match=message):
        Controller(rl_config(tmp_path, "bad", **over), show_progress=False).setup()
    assert not (tmp_path / "runs" / "bad").exists()


def test_distillation_run_moves_the_student_toward_its_teacher(tmp_path):
    """A real vLLM generator samples from the untrained tiny model; the teacher (60 steps of SFT, a recipe run
    first as a warm start is) scores every token; the student's reverse KL to the teacher, measured on its own fresh
    samples each iteration, falls."""
    recipe = write_tiny_sft_recipe(tmp_path / "teacher.yaml", "teacher", steps=60, batch_size=32, warmup_steps=20,
                                   task={"digits": 2, "train_size": 2000, "eval_size": 32})
    # full fine-tuning of the untrained model, the whole model sent to the generator after each step
    cfg = rl_config(tmp_path, "distill", algorithm={"name": "distill", "group_size": 4},
                    teacher={"recipe": str(recipe)}, task={"train_size": 2000, "eval_size": 32},
                    peft={"method": "full"}, sync={"weights": "merged"},
                    train={"steps": 12, "batch_size": 16, "micro_batch_size": 8, "lr": 3e-3, "eval_every": 0})
    summary = train(cfg, show_progress=False)
    assert summary["policy_version"] == 12
    rows = [json.loads(line) for line in (tmp_path / "runs" / "distill" / "metrics.jsonl").read_text().splitlines()]
    kl = [r["rollout/reverse_kl"] for r in rows if "rollout/reverse_kl" in r]
    assert len(kl) == 12 and all("perf/time_teacher" in r for r in rows if "rollout/reverse_kl" in r)
    first, last = sum(kl[:3]) / 3, sum(kl[-3:]) / 3
    assert last < 0.75 * first, kl  # measured: 3.78 -> 2.31 nats per token
    assert (tmp_path / "runs" / "teacher" / "warm_start.json").is_file()  # the teacher recipe ran first, stamped
