"""GPPO / PPO / GRPO surrogate (docs/algorithms.md#gppo): golden values, gradients, invariances.

Gradients are taken with autograd w.r.t. the per-token log-probs and the loss is the token-mean
over N_tok tokens, so a token's gradient is (its case-table gradient) / N_tok.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from rlft.algorithms import ALGORITHMS
from rlft.algorithms.base import StepCounts, count_label_tokens
from rlft.algorithms.gppo import (
    METRIC_KEYS,
    SPEC,
    GPPOConfig,
    gppo_token_loss,
    micro_batch_loss,
    positive_sequences,
    ppo_token_loss,
    token_advantages,
)
from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs
from rlft.ops.reductions import token_mean
from tests.helpers import response_batch

EPS_L, EPS_H = 0.2, 0.28


def _grad(loss_fn, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(token-mean loss, d loss / d logprobs) with N_tok = logprobs.numel()."""
    lp = logprobs.clone().requires_grad_()
    loss = token_mean(loss_fn(lp), torch.ones_like(lp), lp.numel())
    (g,) = torch.autograd.grad(loss, lp)
    return loss.detach(), g


def _gppo(b1=1.0, b2=1.0, c=None):
    return lambda old, adv: (lambda lp: gppo_token_loss(lp, old, adv, EPS_L, EPS_H, b1, b2, c)[0])


def _ppo(c=None):
    return lambda old, adv: (lambda lp: ppo_token_loss(lp, old, adv, EPS_L, EPS_H, c)[0])


def _random_case(n=4000, seed=0):
    """log-ratios uniform in [-3, 3] (ratios 0.05..20: every region), advantages N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(n, generator=gen, dtype=torch.float64) * 5
    old = logprobs - (torch.rand(n, generator=gen, dtype=torch.float64) * 6 - 3)
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    return logprobs, old, adv


# ---------------------------------------------------------------- the case table (docs/algorithms.md#gppo)


@pytest.mark.parametrize("c", [None, 3.0])
def test_gppo_forward_equals_clip_higher_ppo(c):
    """GPPO(b1 = b2 = 1) forward == DAPO clip-higher (PPO with eps_l != eps_h) forward."""
    logprobs, old, adv = _random_case()
    gppo, _ = gppo_token_loss(logprobs, old, adv, EPS_L, EPS_H, 1.0, 1.0, c)
    ppo, _ = ppo_token_loss(logprobs, old, adv, EPS_L, EPS_H, c)
    torch.testing.assert_close(gppo, ppo, rtol=1e-12, atol=1e-12)


def test_case_table_golden_values_gradients_and_regions():
    """3.6.2-4 on four hand-made tokens, eps_l = 0.2, eps_h = 0.28, b1 = 0.5, b2 = 0.75, c = 10, N = 4:

    token  A   delta  region      GPPO value               GPPO grad (x N)    PPO grad (x N)
    0     +2   1.5    high        -b2*1.28*2 = -1.92       -1.92              0
    1     -1   0.5    low         -b1*0.8*(-1) = 0.4       0.4                0
    2     +1   1.1    inside      -1.1                     -1.1               -1.1
    3     -1   20     dual        -c*A = 10                0                  0
    PPO values: -1.28*2 = -2.56, 0.8, -1.1, 10.
    """
    adv = torch.tensor([2.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    delta = torch.tensor([1.5, 0.5, 1.1, 20.0], dtype=torch.float64)
    logprobs = torch.full((4,), -1.0, dtype=torch.float64)
    old = logprobs - delta.log()

    values, regions = gppo_token_loss(logprobs, old, adv, EPS_L, EPS_H, 0.5, 0.75, 10.0)
    torch.testing.assert_close(values, torch.tensor([-1.92, 0.4, -1.1, 10.0], dtype=torch.float64))
    assert regions.high.tolist() == [True, False, False, False]
    assert regions.low.tolist() == [False, True, False, False]
    assert regions.dual.tolist() == [False, False, False, True]
    _, g = _grad(_gppo(0.5, 0.75, 10.0)(old, adv), logprobs)
    torch.testing.assert_close(g, torch.tensor([-1.92, 0.4, -1.1, 0.0], dtype=torch.float64) / 4)

    ppo_values, ppo_regions = ppo_token_loss(logprobs, old, adv, EPS_L, EPS_H, 10.0)
    torch.testing.assert_close(ppo_values, torch.tensor([-2.56, 0.8, -1.1, 10.0], dtype=torch.float64))
    assert all(torch.equal(a, b) for a, b in zip(ppo_regions, regions))
    _, g_ppo = _grad(_ppo(10.0)(old, adv), logprobs)
    torch.testing.assert_close(g_ppo, torch.tensor([0.0, 0.0, -1.1, 0.0], dtype=torch.float64) / 4)


@pytest.mark.parametrize("b1,b2", [(1.0, 1.0), (0.25, 1.0), (0.5, 0.75)])
def test_clipped_region_gradients(b1, b2):
    """On random tokens: high region grad = -b2 (1 + eps_h) A / N, low = -b1 (1 - eps_l) A / N;
    the PPO surrogate gives exactly 0 there."""
    logprobs, old, adv = _random_case(seed=1)
    delta = (logprobs - old).exp()
    high = (adv > 0) & (delta > 1 + EPS_H)
    low = (adv < 0) & (delta < 1 - EPS_L)
    assert high.sum() > 100 and low.sum() > 100
    n = logprobs.numel()
    _, g = _grad(_gppo(b1, b2)(old, adv), logprobs)
    torch.testing.assert_close(g[high], -b2 * (1 + EPS_H) * adv[high] / n)
    torch.testing.assert_close(g[low], -b1 * (1 - EPS_L) * adv[low] / n)
    _, g_ppo = _grad(_ppo()(old, adv), logprobs)
    assert torch.equal(g_ppo[high | low], torch.zeros_like(g_ppo[high | low]))


def test_unclipped_tokens_identical_to_ppo():
    """Every token outside the two clipped regions (inside the bounds, or A > 0 with a low
    ratio, or A < 0 with a high ratio below c) has gradient -delta A / N in both surrogates."""
    logprobs, old, adv = _random_case(seed=2)
    delta = (logprobs - old).exp()
    other = ~(((adv > 0) & (delta > 1 + EPS_H)) | ((adv < 0) & (delta < 1 - EPS_L)))
    n = logprobs.numel()
    v, g = _grad(_gppo(0.5, 0.75)(old, adv), logprobs)
    _, g_ppo = _grad(_ppo()(old, adv), logprobs)
    torch.testing.assert_close(g[other], -delta[other] * adv[other] / n)
    torch.testing.assert_close(g_ppo[other], g[other], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mode", ["gppo", "ppo"])
def test_dual_clip_zero_gradient(mode):
    """A < 0 and delta > c -> value -c A and zero gradient; c = None disables the cap."""
    adv = torch.tensor([-2.0, -0.5], dtype=torch.float64)
    logprobs = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    old = logprobs - math.log(12.0)  # delta = 12 > c = 10
    fn = _gppo(c=10.0) if mode == "gppo" else _ppo(c=10.0)
    _, g = _grad(fn(old, adv), logprobs)
    assert torch.equal(g, torch.zeros_like(g))
    token_loss = gppo_token_loss if mode == "gppo" else ppo_token_loss
    values = token_loss(logprobs, old, adv, EPS_L, EPS_H, dual_clip_c=10.0)[0]
    torch.testing.assert_close(values, torch.tensor([20.0, 5.0], dtype=torch.float64))
    uncapped = token_loss(logprobs, old, adv, EPS_L, EPS_H)[0]
    torch.testing.assert_close(uncapped, torch.tensor([24.0, 6.0], dtype=torch.float64))


def _klear_clamp_gppo(logprobs, old, adv, eps_l, eps_h, c):
    """Klear's `compute_gppo_loss` (b1 = b2 = 1) form: torch.clamp with tensor-valued bounds
    (1 - eps_l)/sg(delta)*delta and (1 + eps_h)/sg(delta)*delta, then PPO's max and dual clip."""
    delta = (logprobs - old).exp()
    sg = delta.detach()
    clipped = torch.clamp(delta, (1 - eps_l) / sg * delta, (1 + eps_h) / sg * delta)
    loss = torch.maximum(-adv * delta, -adv * clipped)
    return torch.where(adv < 0, torch.minimum(loss, -adv * c), loss)


def test_general_beta_one_equals_clamp_form():
    """General-beta GPPO with b1 = b2 = 1 == the clamp-with-tensor-bounds GPPO, values and grads."""
    logprobs, old, adv = _random_case(seed=4)
    v, g = _grad(_gppo(1.0, 1.0, 10.0)(old, adv), logprobs)
    v_ref, g_ref = _grad(lambda lp: _klear_clamp_gppo(lp, old, adv, EPS_L, EPS_H, 10.0), logprobs)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(g, g_ref)


def test_ratio_one_surrogate_equals_advantage():
    """Spec 4.2 test 4: with rho = 1 (one update per rollout batch) the clipped term is A: loss = -A."""
    _, old, adv = _random_case(seed=5)
    for values, _ in (gppo_token_loss(old, old, adv, EPS_L, EPS_H, 0.5, 0.75, 10.0),
                      ppo_token_loss(old, old, adv, 0.2, 0.2, 10.0)):
        torch.testing.assert_close(values, -adv)


def test_token_mean_split_invariance_pure():
    """Two micro-batches normalised by the step-global token count sum to the full-batch loss/grads."""
    logprobs, old, adv = _random_case(n=60, seed=6)
    lp, old, adv, mask = (x.reshape(6, 10) for x in (logprobs, old, adv, (torch.rand(60) > 0.3).double()))
    n = mask.sum().item()

    def loss_and_grad(rows):
        p = lp[rows].clone().requires_grad_()
        loss = token_mean(gppo_token_loss(p, old[rows], adv[rows], EPS_L, EPS_H, 0.5, 1.0, 10.0)[0], mask[rows], n)
        return loss, torch.autograd.grad(loss, p)[0]

    full, g_full = loss_and_grad(slice(0, 6))
    a, g_a = loss_and_grad(slice(0, 2))
    b, g_b = loss_and_grad(slice(2, 6))
    torch.testing.assert_close(a + b, full)
    torch.testing.assert_close(torch.cat([g_a, g_b]), g_full)


# ---------------------------------------------------------------- micro_batch_loss with a tiny policy


class TinyPolicy(torch.nn.Module):
    """Bigram policy (embedding -> linear) with a separately initialised frozen reference."""

    def __init__(self, vocab: int = 11, dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.head = torch.nn.Embedding(vocab, dim), torch.nn.Linear(dim, vocab)
        self.ref_emb, self.ref_head = torch.nn.Embedding(vocab, dim), torch.nn.Linear(dim, vocab)
        for p in (*self.ref_emb.parameters(), *self.ref_head.parameters()):
            p.requires_grad_(False)
        self.reference_calls = 0

    def logits(self, batch):
        return self.head(self.emb(batch["input_ids"]))

    def reference_logits(self, batch):
        self.reference_calls += 1
        with torch.no_grad():
            return self.ref_head(self.ref_emb(batch["input_ids"]))


def _rollout_batch(model: TinyPolicy, seed: int = 0, noise: float = 0.5) -> dict[str, torch.Tensor]:
    """4 sequences of 7 tokens: 2 prompt tokens, responses of lengths 5, 3, 4, 2 (rest padding)."""
    gen = torch.Generator().manual_seed(seed)
    batch, logprobs, mask = response_batch(model, gen)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    batch["old_logprobs"] = (logprobs + noise * torch.randn(logprobs.shape, generator=gen)) * mask
    batch["advantages"] = token_advantages(rewards, torch.zeros(4), mask, GPPOConfig(group_size=4))
    batch["positive"] = positive_sequences(rewards, GPPOConfig())
    return batch


def _counts(batch) -> StepCounts:
    return StepCounts(*count_label_tokens(batch))


def _param_grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def test_on_policy_loss_is_minus_mean_advantage():
    """old_logprobs == current logprobs -> delta = 1 everywhere, no clipping, loss = -sum(m A) / N_tok,
    and the gradient is that of -sum(m A log pi) / N_tok (REINFORCE with the group baseline)."""
    model = TinyPolicy()
    batch = _rollout_batch(model, noise=0.0)
    counts = _counts(batch)
    loss, metrics = micro_batch_loss(model, batch, GPPOConfig(), counts)
    adv = batch["advantages"]
    assert counts.num_tokens == 14.0 and metrics["tokens"] == 14.0
    torch.testing.assert_close(loss, -adv.sum() / 14.0)
    logprobs, mask = token_logprobs(model.logits(batch), batch["labels"])
    expected = _param_grads(model, -(adv * logprobs * mask).sum() / 14.0)
    for got, want in zip(_param_grads(model, micro_batch_loss(model, batch, GPPOConfig(), counts)[0]), expected):
        torch.testing.assert_close(got, want)
    assert metrics["clip_low_tokens"] == metrics["clip_high_tokens"] == metrics["dual_clip_tokens"] == 0.0
    assert model.reference_calls == 0  # kl_coef = 0: no reference forward


@pytest.mark.parametrize(
    "cfg",
    [
        GPPOConfig(beta1=0.5, kl_coef=0.1, aux_nll_coef=0.1),
        GPPOConfig(clip_mode="ppo", eps_high=0.2, reduction="seq-mean-token-mean", kl_coef=0.04),
        GPPOConfig(reduction="seq-mean-token-sum-norm", max_len=5, scale_by_std=False, kl_estimator="k1"),
    ],
    ids=["gppo-token-mean", "grpo-seq-mean", "drgrpo-sum-norm"],
)
def test_micro_batch_split_equals_full_batch(cfg):
    """Step-global normalisers: micro-batches [0:1] + [1:4] give the full-batch loss, gradients and metrics."""
    model = TinyPolicy()
    batch = _rollout_batch(model)
    counts = _counts(batch)
    full, m_full = micro_batch_loss(model, batch, cfg, counts)
    g_full = _param_grads(model, full)
    splits = (slice(0, 1), slice(1, 4))
    parts = [micro_batch_loss(model, {k: v[s] for k, v in batch.items()}, cfg, counts) for s in splits]
    total = parts[0][0] + parts[1][0]
    torch.testing.assert_close(total, full)
    for got, want in zip(_param_grads(model, total), g_full):
        torch.testing.assert_close(got, want)
    for key in METRIC_KEYS:
        assert parts[0][1][key] + parts[1][1][key] == pytest.approx(m_full[key], rel=1e-5, abs=1e-6)
    assert m_full["clip_low_tokens"] + m_full["clip_high_tokens"] > 0  # the noise did push ratios out


class LogitTable(torch.nn.Module):
    """Policy logits are a trainable [B, T, V] table (zeros: uniform over V = 4, so every label has
    log-prob ln(1/4)); the reference logits a fixed table."""

    def __init__(self, ref_logits: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros_like(ref_logits))
        self.ref = ref_logits
        self.reference_calls = 0

    def logits(self, batch):
        return self.table

    def reference_logits(self, batch):
        self.reference_calls += 1
        return self.ref


def _kl_batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """2 equal rows: 1 prompt token, response tokens 1, 2, 3, then a pad. Reference probabilities of the
    three labels: 1/2 (label logit ln 3, the others 0: 3 / (3 + 3)), 1/4 (all 0) and 1/8 (label logit
    ln(3/7): (3/7) / (3/7 + 3)); against pi = 1/4: log r = ref - logp = ln 2, 0, -ln 2."""
    ref = torch.zeros(1, 5, 4)
    ref[0, 0, 1], ref[0, 2, 3] = math.log(3.0), math.log(3.0 / 7.0)
    ref[0, 3] = torch.tensor([9.0, -9.0, 5.0, 0.0])  # predicts the pad: masked, must not count
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, IGNORE_INDEX]] * 2)
    mask = (labels[:, 1:] != IGNORE_INDEX).float()
    batch = {"input_ids": torch.tensor([[0, 1, 2, 3, 0]] * 2), "labels": labels,
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0]] * 2),
             "old_logprobs": math.log(0.25) * mask,  # on-policy
             "advantages": token_advantages(torch.ones(2), torch.zeros(2), mask, GPPOConfig(group_size=2)),
             "positive": torch.zeros(2)}
    return batch, ref.expand(2, 5, 4).clone()


# Per token (log r = ln 2, 0, -ln 2): the KL value and d KL / d logp, by hand.
#   k1 = logp - ref = -log r:        -ln 2, 0, ln 2            (sum 0);          d/dlogp = 1, 1, 1
#   k2 = (log r)^2 / 2:               ln2^2/2, 0, ln2^2/2      (sum ln2^2);      d/dlogp = -log r = -ln 2, 0, ln 2
#   k3 = r - 1 - log r:               1 - ln 2, 0, ln 2 - 1/2  (sum 1/2);        d/dlogp = 1 - r = -1, 0, 1/2
LN2 = math.log(2.0)
KL_BY_HAND = {
    "k1": ([-LN2, 0.0, LN2], [1.0, 1.0, 1.0]),
    "k2": ([LN2**2 / 2, 0.0, LN2**2 / 2], [-LN2, 0.0, LN2]),
    "k3": ([1 - LN2, 0.0, LN2 - 0.5], [-1.0, 0.0, 0.5]),
}


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_all_equal_rewards_only_kl_gradient(estimator):
    """Equal rewards -> zero advantages: the loss is kl_coef * token-mean KL and the only gradient is
    the KL's, both checked against the per-token values above; with kl_coef = 0 the gradient is exactly zero."""
    batch, ref = _kl_batch()
    assert torch.equal(batch["advantages"], torch.zeros_like(batch["advantages"]))
    model = LogitTable(ref)
    counts = _counts(batch)
    assert counts.num_tokens == 6.0
    loss, metrics = micro_batch_loss(model, batch, GPPOConfig(kl_coef=0.1, kl_estimator=estimator), counts)
    values, slopes = KL_BY_HAND[estimator]
    # 2 equal rows of 3 tokens: 0.1 * token-mean = 0.1 * sum(values) / 3; k1: 0, k2: 0.1 ln2^2 / 3 ~ 0.0160151,
    # k3: 0.1 * (1/2) / 3 = 1/60
    assert loss.item() == pytest.approx({"k1": 0.0, "k2": 0.0160151, "k3": 1 / 60}[estimator], abs=1e-7)
    assert metrics["kl_sum"] == pytest.approx(2 * sum(values), abs=1e-6)
    assert model.reference_calls == 1
    (grad,) = torch.autograd.grad(loss, model.table)
    # d logp / d logit_j = [j = label] - 1/4 (uniform policy over 4 tokens); dL/dlogp = 0.1 / 6 * slope
    expected = torch.zeros(2, 5, 4)
    for t, (label, slope) in enumerate(zip([1, 2, 3], slopes)):
        expected[:, t] = 0.1 / 6 * slope * (torch.nn.functional.one_hot(torch.tensor(label), 4) - 0.25)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
    if estimator == "k3":  # the label's logit at the first token: 0.1/6 * (-1) * 3/4 = -1/80
        assert grad[0, 0, 1].item() == pytest.approx(-1 / 80)
    no_kl, _ = micro_batch_loss(model, batch, GPPOConfig(), counts)
    (grad,) = torch.autograd.grad(no_kl, model.table)
    assert torch.count_nonzero(grad) == 0


def test_aux_nll_on_positive_sequences():
    """Zero advantages, aux_nll_coef = 0.1: loss = 0.1 * sum_{positive seqs, t} -log pi / N_tok,
    with N_tok the step's total token count (sequences 0 and 3 have reward 1 -> positive)."""
    model = TinyPolicy()
    batch = _rollout_batch(model)
    batch["advantages"] = torch.zeros_like(batch["advantages"])
    loss, metrics = micro_batch_loss(model, batch, GPPOConfig(aux_nll_coef=0.1), _counts(batch))
    logprobs, mask = token_logprobs(model.logits(batch), batch["labels"])
    positive = mask * torch.tensor([1.0, 0.0, 0.0, 1.0]).unsqueeze(-1)
    torch.testing.assert_close(loss, 0.1 * (-logprobs * positive).sum() / 14.0)
    assert metrics["positive_tokens"] == 7.0


def test_kl_in_reward_placement_never_calls_reference():
    """kl_placement='reward': the KL is already in the advantages; the loss must not add it again."""
    model = TinyPolicy()
    batch = _rollout_batch(model)
    counts = _counts(batch)
    shaped, _ = micro_batch_loss(model, batch, GPPOConfig(kl_coef=0.1, kl_placement="reward"), counts)
    plain, _ = micro_batch_loss(model, batch, GPPOConfig(), counts)
    torch.testing.assert_close(shaped, plain)
    assert model.reference_calls == 0


def test_off_mask_old_logprobs_are_ignored():
    """Garbage (even -inf) in old_logprobs at prompt/pad positions changes nothing."""
    model = TinyPolicy()
    batch = _rollout_batch(model)
    counts = _counts(batch)
    clean, _ = micro_batch_loss(model, batch, GPPOConfig(), counts)
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    batch["old_logprobs"] = torch.where(mask, batch["old_logprobs"], -math.inf)
    dirty, _ = micro_batch_loss(model, batch, GPPOConfig(), counts)
    torch.testing.assert_close(dirty, clean)
    assert all(torch.isfinite(g).all() for g in _param_grads(model, dirty) if g is not None)


# ---------------------------------------------------------------- config and registration


def test_config_defaults_and_validation():
    cfg = GPPOConfig()
    assert (cfg.eps_low, cfg.eps_high, cfg.beta1, cfg.beta2, cfg.dual_clip_c) == (0.2, 0.28, 1.0, 1.0, 10.0)
    assert (cfg.reduction, cfg.kl_coef, cfg.kl_estimator, cfg.kl_placement) == ("token-mean", 0.0, "k3", "loss")
    assert (cfg.group_size, cfg.scale_by_std, cfg.dynamic_sampling, cfg.aux_nll_coef) == (8, True, False, 0.0)
    for key, field in GPPOConfig.model_fields.items():
        assert key == "name" or field.description, f"{key} has no description"
    with pytest.raises(ValidationError):
        GPPOConfig(reduction="seq-mean-token-sum-norm")
    with pytest.raises(ValidationError):
        GPPOConfig(dual_clip_c=1.0)
    with pytest.raises(ValidationError):
        GPPOConfig(clip_ratio=0.2)


def test_spec_registration():
    assert ALGORITHMS["gppo"] is SPEC
    assert SPEC.name == "gppo" and SPEC.source == "rollouts" and SPEC.config_cls is GPPOConfig
    assert set(SPEC.roles) == {"generator", "reward"}
    assert SPEC.micro_batch_loss is micro_batch_loss and SPEC.count_tokens is count_label_tokens
