"""Policy losses of the GPPO family beside gppo/ppo (docs/algorithms.md#policy-losses): GSPO,
GSPO-token, CISPO. Golden values derived by hand, their defining properties, micro-batch
invariance through `micro_batch_loss` with behaviour weights, the config checks. Pure torch."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from rlft.algorithms.base import StepCounts, count_label_tokens
from rlft.algorithms.gppo import METRIC_KEYS, GPPOConfig, micro_batch_loss
from rlft.algorithms.gppo_losses import POLICY_LOSSES
from rlft.ops.cispo import cispo_token_loss
from rlft.ops.gspo import gspo_loss, gspo_token_loss
from rlft.ops.mismatch import MISMATCH_KEYS
from rlft.ops.reductions import aggregate
from rlft.ops.surrogates import ppo_token_loss
from tests.helpers import Bigram, assert_micro_batches_sum_to_full_batch, mismatched_batch

F64 = torch.float64
E = math.e


def _two_sequences():
    """Row 0: 3 tokens, log-ratios [0.1, 0.2, 0.3] (mean 0.2: s_0 = e^0.2), A = +1.
    Row 1: 2 tokens and a pad, log-ratios [-0.1, -0.3] (mean -0.2: s_1 = e^-0.2), A = -1."""
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
    logprobs = torch.full((2, 3), -1.0, dtype=F64) * mask
    old = logprobs - torch.tensor([[0.1, 0.2, 0.3], [-0.1, -0.3, 0.0]], dtype=F64)
    adv = torch.tensor([[1.0], [-1.0]], dtype=F64) * mask
    return logprobs, old, adv, mask


def _seq_mean(token_loss, mask):
    return aggregate(token_loss, mask, "seq-mean-token-mean", num_tokens=float(mask.sum()), num_sequences=2.0)


# ---------------------------------------------------------------- GSPO


def test_gspo_golden_values_and_gradients():
    """eps 0.2 / 0.28: s_0 = e^0.2 = 1.2214 < 1.28 and s_1 = e^-0.2 = 0.8187 > 0.8, no clip:
    L_0 = -s_0, L_1 = +s_1, on each of the row's tokens; seq-mean-token-mean = (L_0 + L_1)/2 = -sinh(0.2).
    dL_i/dl_t = -A_i s_i / n_i, halved by the mean over B = 2: row 0 -e^0.2/6, row 1 +e^-0.2/4, pad 0.
    eps 0.1 / 0.1: s_0 > 1.1 with A > 0 -> L_0 = -1.1; s_1 < 0.9 with A < 0 -> L_1 = -min(-s_1, -0.9) = 0.9;
    both clipped: zero gradient."""
    logprobs, old, adv, mask = _two_sequences()
    lp = logprobs.clone().requires_grad_()
    values, regions = gspo_loss(lp, old, adv, mask, 0.2, 0.28)
    s0, s1 = E ** 0.2, E ** -0.2
    torch.testing.assert_close(values.detach(), torch.tensor([[-s0] * 3, [s1, s1, 0.0]], dtype=F64))
    assert not regions.low.any() and not regions.high.any()
    loss = _seq_mean(values, mask)
    assert loss.item() == pytest.approx(-math.sinh(0.2))
    (grad,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(grad, torch.tensor([[-s0 / 6] * 3, [s1 / 4, s1 / 4, 0.0]], dtype=F64))

    values, regions = gspo_loss(lp, old, adv, mask, 0.1, 0.1)
    torch.testing.assert_close(values.detach(), torch.tensor([[-1.1] * 3, [0.9, 0.9, 0.0]], dtype=F64))
    assert regions.high.tolist() == [[True] * 3, [False] * 3]
    assert regions.low.tolist() == [[False] * 3, [True, True, False]]
    (grad,) = torch.autograd.grad(_seq_mean(values, mask), lp)
    assert torch.count_nonzero(grad) == 0


def _random_batch(seed: int, per_token: bool = False):
    """6 rows of up to 8 tokens (lengths 8, 1, 5, 3, 8, 2), log-ratios N(0, 0.3^2), advantages N(0, 1)
    per row (or per token)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(6, 8, dtype=F64)
    for row, n in enumerate([8, 1, 5, 3, 8, 2]):
        mask[row, :n] = 1.0
    logprobs = -torch.rand(6, 8, generator=gen, dtype=F64) * 3 * mask
    old = (logprobs - 0.3 * torch.randn(6, 8, generator=gen, dtype=F64)) * mask
    shape = (6, 8) if per_token else (6, 1)
    adv = torch.randn(shape, generator=gen, dtype=F64) * mask
    return logprobs, old, adv, mask


def test_gspo_with_equal_token_ratios_is_the_token_ratio():
    """When every token of a response has the same ratio e^c, s_i = e^c: GSPO's value on each token is
    the token-level clipped surrogate's (PPO without dual clip)."""
    logprobs, _, adv, mask = _random_batch(0)
    c = torch.tensor([[0.5], [-0.5], [0.05], [-0.1], [0.3], [-0.01]], dtype=F64)
    old = (logprobs - c) * mask
    values, _ = gspo_loss(logprobs, old, adv, mask, 0.2, 0.28)
    ppo, _ = ppo_token_loss(logprobs, old, adv, 0.2, 0.28, None)
    torch.testing.assert_close(values, ppo * mask)


@pytest.mark.parametrize("reduction", ["token-mean", "seq-mean-token-mean"])
def test_gspo_token_equals_gspo_in_value_and_gradient_with_sequence_advantages(reduction):
    """A_i,t = A_i: s_i,t has the value s_i on every token, so both losses are equal per token, and
    d s_i,t / d l_t = s_i = n_i d s_i / d l_t, which the token sums turn into the same gradient;
    eps 0.05 / 0.05 clips some rows and not others."""
    logprobs, old, adv, mask = _random_batch(1)
    grads, losses = [], []
    for fn in (gspo_loss, gspo_token_loss):
        lp = logprobs.clone().requires_grad_()
        values, regions = fn(lp, old, adv, mask, 0.05, 0.05)
        losses.append(values.detach())
        loss = aggregate(values, mask, reduction, num_tokens=float(mask.sum()), num_sequences=6.0)
        grads.append(torch.autograd.grad(loss, lp)[0])
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert regions.low.any() or regions.high.any()
    assert (grads[0].abs().sum(-1) > 0).any()


def test_gspo_token_per_token_advantages_golden():
    """One row, log-ratios [0.1, 0.3] (s = e^0.2 on both tokens), A = [1, -2], eps 0.5 (no clip):
    L = [-s, 2s]; summed, dL/dl_t = -s A_t = [-s, 2s] (s_i,t's gradient is s times that of l_t)."""
    mask = torch.ones(1, 2, dtype=F64)
    lp = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    old = lp.detach() - torch.tensor([[0.1, 0.3]], dtype=F64)
    adv = torch.tensor([[1.0, -2.0]], dtype=F64)
    values, _ = gspo_token_loss(lp, old, adv, mask, 0.5, 0.5)
    s = E ** 0.2
    torch.testing.assert_close(values.detach(), torch.tensor([[-s, 2 * s]], dtype=F64))
    (grad,) = torch.autograd.grad(values.sum(), lp)
    torch.testing.assert_close(grad, torch.tensor([[-s, 2 * s]], dtype=F64))


# ---------------------------------------------------------------- CISPO


def test_cispo_golden_values_and_gradients():
    """l = [-1, -2, -0.5, -3], r = [1.5, 0.5, 8, 1], A = [1, -1, 2, -0.5], eps_high 4 (cap 5):
    w = [1.5, 0.5, 5, 1]; L = -w A l = [1.5, -1, 5, -1.5]; dL/dl = -w A = [-1.5, 0.5, -10, 0.5]:
    the clipped token 2 keeps a gradient (PPO would give it none). With eps_low 0.2, w_1 = 0.8."""
    lp = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=F64, requires_grad=True)
    old = lp.detach() - torch.tensor([1.5, 0.5, 8.0, 1.0], dtype=F64).log()
    adv = torch.tensor([1.0, -1.0, 2.0, -0.5], dtype=F64)
    values, regions = cispo_token_loss(lp, old, adv, 4.0)
    torch.testing.assert_close(values.detach(), torch.tensor([1.5, -1.0, 5.0, -1.5], dtype=F64))
    assert regions.high.tolist() == [False, False, True, False] and not regions.low.any()
    (grad,) = torch.autograd.grad(values.sum(), lp)
    torch.testing.assert_close(grad, torch.tensor([-1.5, 0.5, -10.0, 0.5], dtype=F64))
    values, regions = cispo_token_loss(lp, old, adv, 4.0, eps_low=0.2)
    assert values[1].item() == pytest.approx(-(0.8 * -1.0 * -2.0))
    assert regions.low.tolist() == [False, True, False, False]


def test_cispo_weight_carries_no_gradient_and_clipped_tokens_keep_theirs():
    """Ratios e^[-3, 3]: d(sum L)/dl = -w A exactly (the weight is a constant, though it is computed
    from l), including the tokens whose weight was capped."""
    gen = torch.Generator().manual_seed(2)
    lp = (-torch.rand(400, generator=gen, dtype=F64) * 5).requires_grad_()
    old = lp.detach() - (torch.rand(400, generator=gen, dtype=F64) * 6 - 3)
    adv = torch.randn(400, generator=gen, dtype=F64)
    values, regions = cispo_token_loss(lp, old, adv, 0.28, eps_low=0.2)
    (grad,) = torch.autograd.grad(values.sum(), lp)
    w = (lp.detach() - old).exp().clamp(0.8, 1.28)
    assert torch.equal(grad, -w * adv)
    clipped = regions.low | regions.high
    assert clipped.sum() > 100 and (grad[clipped] != 0).all()


# ---------------------------------------------------------------- through micro_batch_loss


def _batch(model: Bigram, per_token: bool) -> dict[str, torch.Tensor]:
    """4 sequences (responses of 5, 3, 4, 2 tokens); pi_prox and pi_sampler are pi_theta moved by noise."""
    return mismatched_batch(model, per_token, prox_noise=0.2)


@pytest.mark.parametrize("cfg, per_token", [
    (GPPOConfig(clip_mode="gspo", reduction="seq-mean-token-mean", gspo_eps_low=0.1, gspo_eps_high=0.1), False),
    (GPPOConfig(clip_mode="gspo", gspo_eps_low=0.1, gspo_eps_high=0.1, kl_coef=0.0, aux_nll_coef=0.1), False),
    (GPPOConfig(clip_mode="gspo", old_logprobs="learner", correction="mis", correction_level="sequence",
                reduction="seq-mean-token-mean"), False),
    (GPPOConfig(clip_mode="gspo_token", old_logprobs="learner", correction="tis", gspo_eps_low=0.1,
                gspo_eps_high=0.1), True),
    (GPPOConfig(clip_mode="cispo", old_logprobs="learner", correction="tis", cispo_eps_high=0.2), True),
    (GPPOConfig(clip_mode="cispo", reduction="seq-mean-token-sum-norm", max_len=5, advantage="rloo"), False),
], ids=["gspo-seq-mean", "gspo-token-mean-aux", "gspo-learner-mis-seq", "gspo-token-learner-tis",
        "cispo-learner-tis", "cispo-drgrpo"])
def test_micro_batches_sum_to_the_full_batch(cfg, per_token):
    """Step-global normalisers: micro-batches [0:1] + [1:4] give the full batch's loss, gradients and
    metric sums; so do ranks, which split a step the same way with the same StepCounts."""
    model = Bigram()
    batch = _batch(model, per_token)
    if cfg.old_logprobs == "sampler":
        del batch["prox_logprobs"]
    want, _ = assert_micro_batches_sum_to_full_batch(
        model, batch, cfg, METRIC_KEYS + (MISMATCH_KEYS if cfg.old_logprobs == "learner" else ()))
    assert any(w.abs().sum() > 0 for w in want)


def test_gspo_on_policy_is_reinforce_with_the_sequence_token_mean():
    """old = pi_theta: s_i = 1, no clip even at the paper's eps, so with seq-mean-token-mean the loss is
    -(1/B) sum_i A_i and its gradient that of -(1/B) sum_i A_i (1/n_i) sum_t log pi_theta(y_i,t)."""
    model = Bigram()
    batch = _batch(model, per_token=False)
    del batch["prox_logprobs"]
    from rlft.ops.logprobs import token_logprobs

    with torch.no_grad():
        batch["old_logprobs"] = token_logprobs(model.logits(batch), batch["labels"])[0]
    counts = StepCounts(*count_label_tokens(batch))
    cfg = GPPOConfig(clip_mode="gspo", reduction="seq-mean-token-mean")
    loss, metrics = micro_batch_loss(model, batch, cfg, counts)
    a = torch.tensor([1.5, -0.5, -0.5, 0.5])
    assert loss.item() == pytest.approx(-a.mean().item(), abs=1e-6)
    assert metrics["clip_low_tokens"] == metrics["clip_high_tokens"] == 0.0
    logprobs, mask = token_logprobs(model.logits(batch), batch["labels"])
    reinforce = -(a * (logprobs * mask).sum(-1) / mask.sum(-1)).mean()
    params = list(model.parameters())
    for g, w in zip(torch.autograd.grad(loss, params), torch.autograd.grad(reinforce, params)):
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------- config


def test_policy_loss_defaults_registry_and_config_errors():
    assert set(POLICY_LOSSES) == {"gppo", "ppo", "gspo", "gspo_token", "cispo"}
    cfg = GPPOConfig()
    assert cfg.clip_mode == "gppo" and cfg.advantage == "grpo"
    assert (cfg.gspo_eps_low, cfg.gspo_eps_high) == (3e-4, 4e-4)
    assert (cfg.cispo_eps_high, cfg.cispo_eps_low) == (4.0, None)
    for key, field in GPPOConfig.model_fields.items():
        assert key == "name" or field.description, f"{key} has no description"
    with pytest.raises(ValidationError, match="did you mean 'gspo'"):
        GPPOConfig(clip_mode="gspoo")
    with pytest.raises(ValidationError, match=r"clip_mode=cispo does not read eps_high=0.3 \(read by clip_mode "
                                              r"gppo / ppo\); clip_mode=cispo reads cispo_eps_high, cispo_eps_low"):
        GPPOConfig(clip_mode="cispo", eps_high=0.3)
    with pytest.raises(ValidationError, match="clip_mode=gppo does not read gspo_eps_low=0.01"):
        GPPOConfig(gspo_eps_low=0.01)
    with pytest.raises(ValidationError, match="clip_mode=ppo does not read beta1=0.5"):
        GPPOConfig(clip_mode="ppo", beta1=0.5)
    with pytest.raises(ValidationError, match="use clip_mode=gspo_token"):
        GPPOConfig(clip_mode="gspo", process_coef=0.5)
    GPPOConfig(clip_mode="gspo_token", process_coef=0.5)
    # a dumped config (every field written out) loads again: only values away from their default count
    for mode in POLICY_LOSSES:
        dumped = GPPOConfig(clip_mode=mode).model_dump()
        assert GPPOConfig(**dumped).clip_mode == mode


def test_gspo_ratio_ignores_tokens_the_sampler_did_not_produce():
    """IM-RAG's gold answer tokens are labelled but written, not sampled (old log-prob 0 in the row):
    they are left out of s_i, so their old log-prob cannot move the loss."""
    from rlft.algorithms.gppo import policy_loss

    model = Bigram()
    batch = _batch(model, per_token=False)
    del batch["prox_logprobs"]
    unsampled = torch.zeros_like(batch["old_logprobs"])
    unsampled[0, 5] = 1.0  # row 0's last response token (2 prompt tokens: positions 1..5)
    counts = StepCounts(*count_label_tokens(batch))
    cfg = GPPOConfig(clip_mode="gspo", gspo_eps_low=0.5, gspo_eps_high=0.5)
    first = policy_loss(model, batch, cfg, counts, unsampled=unsampled)[0]
    batch["old_logprobs"][0, 5] = -40.0
    torch.testing.assert_close(policy_loss(model, batch, cfg, counts, unsampled=unsampled)[0], first)
    assert policy_loss(model, batch, cfg, counts)[0].item() != pytest.approx(first.item())
