"""KL estimators and group-relative advantages: golden values and properties
(docs/algorithms.md#kl-estimators, docs/algorithms.md#group-relative-advantages)."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.ops.advantages import (
    GRPO_EPS,
    broadcast_to_tokens,
    dynamic_sampling_keep,
    group_ids_from_size,
    group_relative_advantages,
    kl_in_reward_advantages,
    reverse_cumsum,
)
from rlft.ops.kl import kl_k1, kl_k2, kl_k3, kl_penalty

LN2 = math.log(2.0)


def _lp(*probs: float) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probs], dtype=torch.float64)


# ---------------------------------------------------------------- KL estimators


def test_kl_golden_values():
    """pi_theta = 0.5, pi_ref = 0.25 -> r = 1/2, log r = -ln2:
    k1 = -log r = ln2; k2 = (ln2)^2 / 2; k3 = (r - 1) - log r = ln2 - 1/2.
    Swapped (pi_theta = 0.25, pi_ref = 0.5) -> r = 2: k1 = -ln2; k2 = (ln2)^2 / 2; k3 = 1 - ln2.
    """
    logp, ref = _lp(0.5, 0.25), _lp(0.25, 0.5)
    expected = {
        "k1": [LN2, -LN2],
        "k2": [0.5 * LN2**2, 0.5 * LN2**2],
        "k3": [LN2 - 0.5, 1.0 - LN2],
    }
    for name, values in expected.items():
        torch.testing.assert_close(kl_penalty(logp, ref, name), torch.tensor(values, dtype=torch.float64))


def test_kl_golden_gradients():
    """d/dlog pi_theta with log r = ref - logp:
    k1 = logp - ref -> 1;  k2 = (ref - logp)^2 / 2 -> logp - ref;  k3 = e^{ref-logp} - 1 - (ref - logp) -> 1 - r.
    At pi_theta = 0.5, pi_ref = 0.25 (r = 1/2): 1, ln2, 1/2.
    """
    expected = {kl_k1: 1.0, kl_k2: LN2, kl_k3: 0.5}
    for fn, grad in expected.items():
        logp = _lp(0.5).requires_grad_()
        fn(logp, _lp(0.25)).sum().backward()
        assert logp.grad.item() == pytest.approx(grad, rel=1e-12)


def test_k3_nonnegative_and_zero_with_zero_gradient_at_reference():
    """Spec 4.2 test 3: k3 >= 0 everywhere, k3 = 0 and grad k3 = 0 when pi_theta == pi_ref."""
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(1000, generator=gen, dtype=torch.float64) * 8
    ref = -torch.rand(1000, generator=gen, dtype=torch.float64) * 8
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k2(logp, ref) >= 0).all()
    same = logp.clone().requires_grad_()
    k3 = kl_k3(same, logp)
    k3.sum().backward()
    assert torch.equal(k3.detach(), torch.zeros_like(k3))
    assert torch.equal(same.grad, torch.zeros_like(same))


def test_k1_k3_unbiased_and_gradient_expectations():
    """Exact expectations over a categorical pi_theta = softmax(theta), pi_ref = q:
    E_pi[k1] = E_pi[k3] = KL(pi || q)   (k3: E_pi[q/pi - 1] = 0);
    E_pi[grad k1] = E_pi[grad log pi] = 0;   E_pi[grad k3] = grad KL(q || pi).
    Gradients are pathwise in theta with the sampled token held fixed.
    """
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    log_q = torch.log_softmax(torch.randn(7, generator=gen, dtype=torch.float64), -1)
    log_pi = torch.log_softmax(theta, -1)
    pi = log_pi.exp().detach()
    reverse_kl = (pi * (log_pi.detach() - log_q)).sum()
    assert (pi * kl_k1(log_pi, log_q)).sum().item() == pytest.approx(reverse_kl.item(), rel=1e-12)
    assert (pi * kl_k3(log_pi, log_q)).sum().item() == pytest.approx(reverse_kl.item(), rel=1e-12)

    (grad_k1,) = torch.autograd.grad((pi * kl_k1(log_pi, log_q)).sum(), theta, retain_graph=True)
    torch.testing.assert_close(grad_k1, torch.zeros_like(grad_k1))
    (grad_k3,) = torch.autograd.grad((pi * kl_k3(log_pi, log_q)).sum(), theta, retain_graph=True)
    forward_kl = (log_q.exp() * (log_q - log_pi)).sum()
    (grad_forward,) = torch.autograd.grad(forward_kl, theta)
    torch.testing.assert_close(grad_k3, grad_forward)


def test_k3_clamp_like_verl_low_var_kl():
    """k3 clamped to [-10, 10]: log r = 15 -> e^15 - 16 > 10 -> 10; log r = -50 -> 49 -> 10; both
    get zero gradient and stay finite even at log r = 200 (exp would overflow fp32);
    inside the clamp (log r = ln2 -> 1 - ln2) value and gradient are the unclamped ones."""
    ref = torch.tensor([15.0, -50.0, 200.0, LN2])
    logp = torch.zeros(4, requires_grad=True)
    k3 = kl_penalty(logp, ref, "k3", k3_clamp=10.0)
    k3.sum().backward()
    torch.testing.assert_close(k3.detach(), torch.tensor([10.0, 10.0, 10.0, 1.0 - LN2]))
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, 0.0, 0.0, 1.0 - 2.0]))


def test_kl_unknown_estimator():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


# ---------------------------------------------------------------- advantages


def test_grpo_golden_group():
    """Rewards [1, 0, 0, 0]: mean 1/4; unbiased var = (9/16 + 3 * 1/16) / 3 = 1/4 -> std 1/2.
    GRPO: [3/4, -1/4, -1/4, -1/4] / (1/2 + eps); Dr.GRPO: [3/4, -1/4, -1/4, -1/4]."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    centred = torch.tensor([0.75, -0.25, -0.25, -0.25])
    torch.testing.assert_close(group_relative_advantages(rewards, group_size=4), centred / (0.5 + GRPO_EPS))
    torch.testing.assert_close(group_relative_advantages(rewards, group_size=4, scale_by_std=False), centred)


def test_grpo_zero_mean_unit_std_within_groups():
    """Spec 4.2 test 1 (unit std up to the eps in the denominator)."""
    rewards = torch.randn(6 * 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    adv = group_relative_advantages(rewards, group_size=8).reshape(6, 8)
    torch.testing.assert_close(adv.mean(-1), torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(adv.std(-1), torch.ones(6, dtype=torch.float64), rtol=1e-5, atol=1e-5)


def test_all_equal_rewards_give_exactly_zero_advantage():
    """Spec 4.2 test 2 (first half): a group with identical rewards has no signal."""
    rewards = torch.tensor([0.3] * 4 + [1.0, 1.0, 1.0, 1.0])
    for scale in (True, False):
        adv = group_relative_advantages(rewards, group_size=4, scale_by_std=scale)
        assert torch.equal(adv, torch.zeros(8))


def test_group_ids_equal_group_size_layout():
    """Arbitrary (shuffled, non-contiguous) ids give the same per-sequence advantages."""
    gen = torch.Generator().manual_seed(3)
    rewards = torch.randint(0, 2, (12,), generator=gen).float()
    ids = group_ids_from_size(12, 4)
    perm = torch.randperm(12, generator=gen)
    by_size = group_relative_advantages(rewards, group_size=4)
    by_ids = group_relative_advantages(rewards[perm], group_ids=(ids[perm] * 7 + 3))
    torch.testing.assert_close(by_ids, by_size[perm])


def test_singleton_group_mean_zero_std_one():
    """veRL convention: a size-1 group uses mean 0, std 1 -> A = r / (1 + eps) (Dr.GRPO: r)."""
    rewards = torch.tensor([2.0, 1.0, 0.0])
    ids = torch.tensor([0, 1, 1])
    adv = group_relative_advantages(rewards, group_ids=ids)
    torch.testing.assert_close(adv[0], torch.tensor(2.0 / (1.0 + GRPO_EPS)))
    assert group_relative_advantages(rewards, group_ids=ids, scale_by_std=False)[0].item() == 2.0


def test_grouping_arguments_validated():
    with pytest.raises(ValueError):
        group_relative_advantages(torch.zeros(4))
    with pytest.raises(ValueError):
        group_relative_advantages(torch.zeros(4), group_ids=torch.zeros(4), group_size=4)
    with pytest.raises(ValueError):
        group_relative_advantages(torch.zeros(6), group_size=4)


def test_broadcast_to_tokens():
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), mask)
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0, 0.0], [0.0, -1.0, -1.0]]))


def test_dynamic_sampling_keep():
    """Keep groups whose rewards are not all equal (all-0 and all-1 groups are dropped)."""
    rewards = torch.tensor([1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0.5, 0.5, 0.5, 1.0])
    keep = dynamic_sampling_keep(rewards, group_size=4)
    assert keep.tolist() == [True] * 4 + [False] * 8 + [True] * 4
    with pytest.raises(ValueError):
        dynamic_sampling_keep(rewards, group_size=3)


def test_dynamic_sampling_keep_reads_group_ids_not_row_order():
    """Interleaved groups: group 7 = rows 0, 2 (rewards 1, 0: kept), group 3 = rows 1, 3 (1, 1: dropped)."""
    keep = dynamic_sampling_keep(torch.tensor([1.0, 1.0, 0.0, 1.0]), group_ids=torch.tensor([7, 3, 7, 3]))
    assert keep.tolist() == [True, False, True, False]


def test_kl_in_reward_advantages_golden():
    """A_t = 1 on 3 valid tokens, k1_t = logp_t - ref_t = [0.1, 0.2, 0.3], kl_coef = 0.5:
    reward-to-go of the KL term sum_{s>=t} k_s = [0.6, 0.5, 0.3] ->
    A' = 1 - 0.5 * [0.6, 0.5, 0.3] = [0.7, 0.75, 0.85]; the pad token stays 0."""
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv = broadcast_to_tokens(torch.tensor([1.0]), mask)
    logp = torch.tensor([[-1.0, -1.0, -1.0, 5.0]], requires_grad=True)
    ref = torch.tensor([[-1.1, -1.2, -1.3, 0.0]])
    out = kl_in_reward_advantages(adv, logp, ref, mask, kl_coef=0.5, estimator="k1")
    torch.testing.assert_close(out, torch.tensor([[0.7, 0.75, 0.85, 0.0]]))
    assert not out.requires_grad


def test_reverse_cumsum():
    torch.testing.assert_close(reverse_cumsum(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([6.0, 5.0, 3.0]))
