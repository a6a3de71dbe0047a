"""The KL to the reference put into the reward (`kl_placement: reward`, docs/algorithms.md#kl-in-the-reward):
REINFORCE++'s per-token returns, golden values by hand, the invariance with a zero KL, the learners'
KL score, the config checks. Pure torch (the run with real engines is in tests/test_rl.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algorithms.base import RowContext
from rlft.algorithms.gppo import GPPOConfig, build_rows
from rlft.algorithms.gppo_kl_reward import SCORE_KEY, kl_reward_rows, reference_kl
from rlft.ops.advantages import kl_reward_returns
from rlft.ops.logprobs import IGNORE_INDEX
from rlft.types import Example, Rollout, Score

F64 = torch.float64


def _rollout(reward: float, n_tokens: int, group: int = 0, prompt: int = 2) -> Rollout:
    return Rollout(Example("q", None, "1"), group, [1] * prompt, list(range(3, 3 + n_tokens)), [-0.5] * n_tokens, "",
                   0, "stop", [], Score(reward, reward > 0))


def _with_kl(rows: list[dict], per_row: list[list[float]]) -> list[dict]:
    """Each row's `ref_kl` on its response tokens (the learners' score), 0 on the prompt positions."""
    out = []
    for row, kl in zip(rows, per_row):
        values, k = [0.0] * (len(row["input_ids"]) - 1), iter(kl)
        for t, label in enumerate(row["labels"][1:]):
            if label != IGNORE_INDEX:
                values[t] = next(k)
        out.append({**row, SCORE_KEY: values})
    return out


def _trained(row: dict) -> list[float]:
    return [a for a, label in zip(row["advantages"], row["labels"][1:]) if label != IGNORE_INDEX]


def _ctx(**algorithm) -> RowContext:
    return RowContext(None, False, 64, GPPOConfig(kl_placement="reward", **algorithm))


def test_kl_reward_returns_golden():
    """beta = 0.5. Row 0: b = 1, k = [0.1, 0.2, 0.3] -> KL to go [0.6, 0.5, 0.3] -> G = 1 - 0.5 * that =
    [0.7, 0.75, 0.85]; row 1: b = -0.5, k = [0.4, 0] -> G = [-0.7, -0.5]; off the mask 0."""
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.4, 0.0, 9.0, 9.0]])
    out = kl_reward_returns(torch.tensor([1.0, -0.5]), kl, mask, kl_coef=0.5)
    torch.testing.assert_close(out, torch.tensor([[0.7, 0.75, 0.85, 0.0], [-0.7, -0.5, 0.0, 0.0]], dtype=F64))


def test_reinforce_pp_with_the_kl_in_the_reward_golden():
    """REINFORCE++, beta = 1: rewards [1, 0], two tokens each, k = [0.2, 0.2] and [0, 0].
    Returns: [1 - 0.4, 1 - 0.2] = [0.6, 0.8] and [0, 0]. Whitened over the 4 tokens: mu = 0.35,
    sigma^2 = (0.25^2 + 0.45^2 + 2 * 0.35^2) / 4 = 0.1275, A = (G - 0.35) / sqrt(0.1275)."""
    ctx = _ctx(advantage="reinforce_pp", group_size=2, kl_coef=1.0)
    rows, _ = build_rows([_rollout(1.0, 2), _rollout(0.0, 2)], ctx)
    out, stats = kl_reward_rows(_with_kl(rows, [[0.2, 0.2], [0.0, 0.0]]), ctx)
    sigma = math.sqrt(0.1275)
    assert _trained(out[0]) == pytest.approx([0.25 / sigma, 0.45 / sigma])
    assert _trained(out[1]) == pytest.approx([-0.35 / sigma, -0.35 / sigma])
    assert stats["rollout/ref_kl"] == pytest.approx(0.1)  # 0.4 over 4 tokens
    assert stats["rollout/kl_reward"] == pytest.approx(-0.2)  # -beta * 0.4 over 2 sequences


def test_reinforce_pp_baseline_takes_the_group_mean_off_before_the_kl():
    """REINFORCE++-baseline, beta = 0.5, one group, rewards [1, 0], one token each with k = [0.4, 0]:
    bases [0.5, -0.5]; returns [0.5 - 0.2, -0.5] = [0.3, -0.5]; whitened: mu = -0.1, sigma = 0.4 -> [1, -1]."""
    ctx = _ctx(advantage="reinforce_pp_baseline", group_size=2, kl_coef=0.5)
    rows, _ = build_rows([_rollout(1.0, 1), _rollout(0.0, 1)], ctx)
    out, _ = kl_reward_rows(_with_kl(rows, [[0.4], [0.0]]), ctx)
    assert _trained(out[0]) == pytest.approx([1.0]) and _trained(out[1]) == pytest.approx([-1.0])


def test_grpo_and_rloo_keep_their_group_advantage_and_take_the_kl_to_go_off_unwhitened():
    """rloo, beta = 0.5, rewards [1, 0] (A = [1, -1]), k = [0.2, 0.4] on row 0's two tokens:
    row 0 -> [1 - 0.5 * 0.6, 1 - 0.5 * 0.4] = [0.7, 0.8], row 1 (no KL) -> [-1, -1]. grpo with
    outcome_coef 2: its advantage a (as with the KL in the loss), times nothing more, minus the same KL to go."""
    ctx = _ctx(advantage="rloo", group_size=2, kl_coef=0.5)
    rows, _ = build_rows([_rollout(1.0, 2), _rollout(0.0, 2)], ctx)
    out, _ = kl_reward_rows(_with_kl(rows, [[0.2, 0.4], [0.0, 0.0]]), ctx)
    assert _trained(out[0]) == pytest.approx([0.7, 0.8]) and _trained(out[1]) == pytest.approx([-1.0, -1.0])

    grpo = _ctx(group_size=2, kl_coef=0.5, outcome_coef=2.0)
    rows, _ = build_rows([_rollout(1.0, 2), _rollout(0.0, 2)], grpo)
    plain, _ = build_rows([_rollout(1.0, 2), _rollout(0.0, 2)], RowContext(None, False, 64, GPPOConfig(
        group_size=2, outcome_coef=2.0)))
    a = _trained(plain[0])[0]  # 2 * (1 - 0.5) / (std + eps): the loss placement's advantage
    out, _ = kl_reward_rows(_with_kl(rows, [[0.2, 0.4], [0.0, 0.0]]), grpo)
    assert _trained(out[0]) == pytest.approx([a - 0.3, a - 0.2]) and _trained(out[1]) == pytest.approx([-a, -a])


@pytest.mark.parametrize("advantage", ["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"])
def test_a_zero_kl_gives_the_advantages_of_the_loss_placement(advantage):
    """With k = 0 on every token the per-token returns are the outcome terms, and whitening them over the
    batch's tokens is the token-weighted whitening of the sequence returns: the rows equal kl_placement loss's
    (unequal lengths and two groups, so the token weights matter)."""
    rollouts = [_rollout(1.0, 3, 0), _rollout(0.0, 1, 0), _rollout(0.5, 2, 1), _rollout(0.0, 4, 1)]
    loss, _ = build_rows(rollouts, RowContext(None, False, 64, GPPOConfig(advantage=advantage, group_size=2)))
    ctx = _ctx(advantage=advantage, group_size=2, kl_coef=0.3)
    rows, _ = build_rows(rollouts, ctx)
    out, _ = kl_reward_rows(_with_kl(rows, [[0.0] * n for n in (3, 1, 2, 4)]), ctx)
    for got, want in zip(out, loss):
        assert _trained(got) == pytest.approx(_trained(want), abs=1e-6)


def test_dropped_groups_stay_loss_free_fillers():
    """Dynamic sampling drops group 1 (rewards all 0): its fillers train no token and get no advantage; the
    kept group's whitening ignores them."""
    ctx = _ctx(advantage="reinforce_pp", group_size=2, kl_coef=1.0, dynamic_sampling=True)
    rows, _ = build_rows([_rollout(1.0, 1, 0), _rollout(0.0, 1, 0), _rollout(0.0, 1, 1), _rollout(0.0, 1, 1)], ctx)
    out, _ = kl_reward_rows(_with_kl(rows, [[0.0], [0.0], [], []]), ctx)
    assert [_trained(r) for r in out] == [pytest.approx([1.0]), pytest.approx([-1.0]), [], []]
    assert all(a == 0.0 for r in out[2:] for a in r["advantages"])


def test_ppo_adds_the_kl_to_the_rewards_gae_reads():
    """PPO, gamma = lambda = 1, values 0, no whitening: A_t = the return to go = r - beta sum_{s>=t} k_s.
    r = 1, beta = 0.5, k = [0.2, 0.4] -> [1 - 0.3, 1 - 0.2] = [0.7, 0.8]."""
    from rlft.algorithms.ppo import PPOConfig, build_rows as ppo_rows, gae_rows, kl_reward_stats

    ctx = RowContext(None, False, 64, PPOConfig(group_size=1, kl_coef=0.5, kl_placement="reward", lam=1.0,
                                                whiten_advantages=False))
    rows, _ = ppo_rows([_rollout(1.0, 2)], ctx)
    rows, stats = kl_reward_stats(_with_kl(rows, [[0.2, 0.4]]), ctx)
    rows = [{**row, "old_values": [0.0] * len(row[SCORE_KEY])} for row in rows]
    out, _ = gae_rows(rows, ctx)
    assert _trained(out[0]) == pytest.approx([0.7, 0.8])
    assert stats["rollout/ref_kl"] == pytest.approx(0.3)


class _Logits:
    """A model whose policy and reference logits are fixed tensors (what the learners' score reads)."""

    def __init__(self, policy: torch.Tensor, reference: torch.Tensor):
        self.policy, self.ref = policy, reference

    def logits(self, batch):
        return self.policy

    def reference_logits(self, batch):
        return self.ref


def test_the_learners_score_is_the_tempered_kl_estimate_on_labelled_tokens():
    """Vocabulary 2, one labelled token (the second position predicts token 1). Policy logits [0, 0] ->
    p(1) = 1/2; reference logits [0, ln 3] -> p_ref(1) = 3/4 at T = 1. k1 = log p - log p_ref = log(2/3);
    at T = 2 the reference becomes [0, ln 3 / 2]: p_ref(1) = sqrt3 / (1 + sqrt3), k1 = log((1 + sqrt3) / (2 sqrt3))."""
    policy = torch.zeros(1, 3, 2)
    reference = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [0.0, 0.0]]])
    batch = {"labels": torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1]]), "temperature": torch.tensor([1.0])}
    cfg = GPPOConfig(kl_coef=0.1, kl_placement="reward", kl_estimator="k1")
    k = reference_kl(_Logits(policy, reference), batch, cfg)
    torch.testing.assert_close(k, torch.tensor([[0.0, math.log(2 / 3)]]))
    k = reference_kl(_Logits(policy, reference), {**batch, "temperature": torch.tensor([2.0])}, cfg)
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(k, torch.tensor([[0.0, math.log((1 + s3) / (2 * s3))]]))


def test_config_checks(tmp_path):
    """The loop takes kl_placement reward now; with process advantages or in distillation it is refused."""
    from rlft.algorithms import distill, gppo, ppo
    from tests.helpers import rl_config

    algorithm = {"name": "gppo", "group_size": 4, "advantage": "reinforce_pp", "kl_coef": 0.01, "kl_placement": "reward"}
    cfg = rl_config(tmp_path, "kl", algorithm=algorithm)
    gppo.validate(cfg)
    assert gppo.SPEC.needs_reference(cfg) and gppo.SPEC.learner_scores.applies(cfg)
    assert not gppo.SPEC.learner_scores.applies(rl_config(tmp_path, "loss", algorithm={**algorithm, "kl_placement": "loss"}))
    assert ppo.SPEC.learner_scores.applies(rl_config(tmp_path, "ppo", algorithm={"name": "ppo", "group_size": 4,
                                                                                 "kl_coef": 0.01, "kl_placement": "reward"}))
    with pytest.raises(ValueError, match="kl_placement=reward with process_coef > 0"):
        gppo.validate(rl_config(tmp_path, "process", algorithm={**algorithm, "process_coef": 0.5},
                                rollout={"step_delimiter": "\n"}))
    with pytest.raises(ValueError, match="distillation's per-token reward is the teacher's"):
        distill.validate(rl_config(tmp_path, "distill", algorithm={"name": "distill", "group_size": 4, "kl_coef": 0.01,
                                                                   "kl_placement": "reward"}))
