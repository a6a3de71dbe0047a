"""DRAKES differentiable sampling and KL (docs/algorithms.md#drakes); every property listed there is tested here."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlft.diffusion import mdlm
from rlft.diffusion.model import MDLM, NEG_INF, MDLMConfig
from rlft.diffusion.relaxed import (
    copy_flag,
    gumbel_softmax,
    masked_kl_step,
    relaxed_sample,
    repo_kl_step,
    straight_through,
)
from rlft.diffusion.schedule import LogLinearSchedule

MASK = 4
L = 12
STEPS = 8
SCHEDULE = LogLinearSchedule()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed: int) -> MDLM:
    torch.manual_seed(seed)
    return MDLM(MDLMConfig(length=L, hidden=16, blocks=2, kernel=3, dilations=(1, 2)))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Recorder:
    """A policy callable that keeps every state it is asked about (ids or soft one-hots)."""

    def __init__(self, model: MDLM):
        self.model, self.states = model, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.states.append(x.detach().clone())
        return self.model.log_probs(x)


def draw(policy, reference, truncate_steps=4, kl_mode="masked_kl", seed=0, batch=3, **kw):
    return relaxed_sample(policy, reference, batch, STEPS, truncate_steps, 1.0, SCHEDULE, gen(seed),
                          kl_mode=kl_mode, length=L, **kw)


def as_soft(state: torch.Tensor) -> torch.Tensor:
    return state if state.dtype.is_floating_point else F.one_hot(state, 5).float()


# ------------------------------------------------------------------------ relaxed states
def test_gumbel_softmax_rows_sum_to_one_and_tends_to_gumbel_max():
    logits = torch.randn(1000, 5, generator=gen(1))
    soft = gumbel_softmax(logits, 1.0, gen(5))
    torch.testing.assert_close(soft.sum(-1), torch.ones(1000))
    hard = mdlm.gumbel_max(logits, gen(5))                        # same seed = same noise
    cold = gumbel_softmax(logits, 1e-3, gen(5))
    assert torch.equal(cold.argmax(-1), hard)
    z = (logits + mdlm.gumbel_noise(logits.shape, gen(5))).sort(-1, descending=True).values
    clear = (z[:, 0] - z[:, 1]) > 0.02                            # rows whose top two are not tied
    assert clear.float().mean() > 0.9
    torch.testing.assert_close(cold[clear], F.one_hot(hard, 5).float()[clear], atol=1e-6, rtol=0)
    warm = gumbel_softmax(logits, 0.1, gen(5))                    # distance shrinks as tau -> 0
    assert (cold - F.one_hot(hard, 5)).abs().sum() < (warm - F.one_hot(hard, 5)).abs().sum()


@pytest.mark.parametrize("copy_flag_temp", [None, 0.5])
def test_relaxed_states_rows_sum_to_one(copy_flag_temp):
    policy = Recorder(tiny_model(0))
    draw(policy, tiny_model(1).log_probs, truncate_steps=5, copy_flag_temp=copy_flag_temp)
    soft = [s for s in policy.states if s.dtype.is_floating_point]
    assert len(soft) == 5
    for state in soft:
        torch.testing.assert_close(state.sum(-1), torch.ones(3, L))
        assert (state >= 0).all()


# --------------------------------------------------------------------- straight-through
def test_straight_through_is_exactly_one_hot_with_identity_jacobian():
    soft = torch.softmax(torch.randn(2, 3, 4, generator=gen(2)), -1).requires_grad_()
    out = straight_through(soft)
    assert torch.equal(out, F.one_hot(soft.argmax(-1), 4).float())     # exact, not approximate
    jac = torch.autograd.functional.jacobian(straight_through, soft.detach())
    torch.testing.assert_close(jac.reshape(24, 24), torch.eye(24), rtol=0, atol=0)


def test_relaxed_sample_output_is_straight_through_one_hot():
    sample = draw(tiny_model(0).log_probs, tiny_model(1).log_probs)
    assert sample.onehot.shape == (3, L, 4) and sample.onehot.requires_grad
    assert torch.equal(sample.onehot.detach(), F.one_hot(sample.hard, 4).float())
    assert sample.hard.dtype == torch.long and sample.kl.shape == (3,)


# -------------------------------------------------------------------------- carry-over
def assert_carry_over(states: list[torch.Tensor], final_ids: torch.Tensor) -> int:
    """Rows that are one-hot on a token stay bit-identical in every later state and in the output."""
    states = [as_soft(s) for s in states]
    checked = 0
    for i, earlier in enumerate(states):
        unmasked = earlier[..., :MASK].max(-1).values == 1.0
        for later in states[i + 1:]:
            assert torch.equal(later[unmasked], earlier[unmasked])
        assert torch.equal(final_ids[unmasked], earlier[..., :MASK].argmax(-1)[unmasked])
        checked += int(unmasked.sum())
    return checked


def test_carry_over_hard_sampler():
    model, recorded = tiny_model(0), []

    def logits(x):                      # mdlm.sample takes a raw-logit model; record its inputs
        recorded.append(x.clone())
        return model(x)

    ids = mdlm.sample(logits, num=4, steps=STEPS, schedule=SCHEDULE, generator=gen(3), length=L)
    assert len(recorded) >= STEPS - 1
    assert assert_carry_over(recorded, ids) > 0


@pytest.mark.parametrize("kl_mode", ["masked_kl", "repo"])
def test_carry_over_relaxed_sampler(kl_mode):
    policy = Recorder(tiny_model(0))
    sample = draw(policy, tiny_model(1).log_probs, truncate_steps=4, kl_mode=kl_mode, batch=4)
    assert any(s.dtype.is_floating_point for s in policy.states)
    assert assert_carry_over(policy.states, sample.hard) > 0


# --------------------------------------------------------------------------------- KL
def test_kl_step_golden_one_position():
    """p = (.5, .5, 0, 0), pre = uniform, alpha_t = .2, alpha_s = .6:
    masked_kl = (.6 - .2)/(1 - .2) * KL = .5 * log 2;
    repo (soft state x = (.1, .3, 0, 0, .6), c = .4, move chance .8):
      (1/.8) * .4 * [.1 (.5 log 2 - .5 + .25) + .3 (.5 log 2 - .5 + .25)]."""
    log_p = torch.log(torch.tensor([[[0.5, 0.5, 0.0, 0.0, 0.0]]])).clamp_min(NEG_INF)
    log_pre = torch.log(torch.tensor([[[0.25, 0.25, 0.25, 0.25, 0.0]]])).clamp_min(NEG_INF)
    hard_masked = F.one_hot(torch.tensor([[MASK]]), 5).float()
    kl = masked_kl_step(log_p, log_pre, hard_masked, 0.2, 0.6)
    torch.testing.assert_close(kl, torch.tensor([0.5 * math.log(2)]))
    soft = torch.tensor([[[0.1, 0.3, 0.0, 0.0, 0.6]]])
    c = copy_flag(soft)
    torch.testing.assert_close(c, torch.tensor([[[0.4]]]))
    per_token = 0.5 * math.log(2) - 0.5 + 0.25
    torch.testing.assert_close(repo_kl_step(log_p, log_pre, soft, c, 0.8),
                               torch.tensor([0.4 * (0.1 + 0.3) * per_token / 0.8]))
    # an unmasked hard position contributes nothing in either form
    unmasked = F.one_hot(torch.tensor([[2]]), 5).float()
    assert masked_kl_step(log_p, log_pre, unmasked, 0.2, 0.6).item() == 0.0
    assert repo_kl_step(log_p, log_pre, unmasked, copy_flag(unmasked), 0.8).item() == 0.0


@pytest.mark.parametrize("kl_mode", ["masked_kl", "repo"])
def test_kl_is_zero_when_policy_equals_reference(kl_mode):
    model = tiny_model(0)
    sample = draw(model.log_probs, tiny_model(0).log_probs, kl_mode=kl_mode)
    torch.testing.assert_close(sample.kl, torch.zeros(3), rtol=0, atol=1e-6)


def test_kl_is_nonnegative_and_positive_for_a_different_reference():
    policy, reference = tiny_model(0).log_probs, tiny_model(1).log_probs
    for seed in range(3):
        masked = draw(policy, reference, kl_mode="masked_kl", seed=seed).kl
        repo = draw(policy, reference, kl_mode="repo", seed=seed).kl
        assert (masked > 0).all() and (repo >= 0).all()
        truncated = draw(policy, reference, kl_mode="masked_kl", seed=seed, truncate_kl=True).kl
        assert (truncated >= 0).all() and (truncated < masked).all()   # fewer (non-negative) steps


def test_kl_mode_none_never_calls_reference():
    def reference(_):
        raise AssertionError("reference must not be called")

    sample = draw(tiny_model(0).log_probs, reference, kl_mode="none")
    assert torch.equal(sample.kl, torch.zeros(3))


# --------------------------------------------------------------------- no gradient at K = 0
def reward(onehot: torch.Tensor) -> torch.Tensor:
    weights = torch.linspace(-1.0, 1.0, L * 4).reshape(L, 4)
    return (onehot * weights).sum((-1, -2))


def test_k0_no_gradient_reaches_theta():
    model = tiny_model(0)
    sample = draw(model.log_probs, tiny_model(1).log_probs, truncate_steps=0)
    assert not sample.onehot.requires_grad                 # the sample is hard and detached
    loss = -reward(sample.onehot).mean()                   # alpha = 0: the KL is not in the loss
    assert not loss.requires_grad
    # ...while the hard-step KL still depends on theta through p_theta (so alpha > 0 would train)
    assert sample.kl.requires_grad


def test_k_positive_gradient_reaches_theta_and_is_finite():
    model = tiny_model(0)
    sample = draw(model.log_probs, tiny_model(1).log_probs, truncate_steps=3)
    (-reward(sample.onehot).mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_checkpointed_hard_kl_matches_plain():
    results = []
    for checkpoint_hard_kl in (True, False):
        model = tiny_model(0)
        sample = draw(model.log_probs, tiny_model(1).log_probs, checkpoint_hard_kl=checkpoint_hard_kl)
        (sample.kl.mean() - reward(sample.onehot).mean()).backward()
        results.append((sample.kl.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------ determinism
def test_relaxed_sample_is_deterministic_and_trajectory_independent_of_kl_mode():
    policy, reference = tiny_model(0).log_probs, tiny_model(1).log_probs
    a = draw(policy, reference, seed=4)
    b = draw(policy, reference, seed=4)
    assert torch.equal(a.onehot, b.onehot) and torch.equal(a.kl, b.kl)
    for kl_mode in ("repo", "none"):
        assert torch.equal(draw(policy, reference, seed=4, kl_mode=kl_mode).hard, a.hard)
    assert not torch.equal(draw(policy, reference, seed=5).hard, a.hard)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="kl_mode"):
        draw(tiny_model(0).log_probs, None, kl_mode="k3")
    with pytest.raises(ValueError, match="truncate_steps"):
        draw(tiny_model(0).log_probs, None, truncate_steps=STEPS + 1)
