"""IFT (docs/algorithms.md#ift): SFT at lambda = gamma = 0, weights, pass-2 inputs, no gradient through pass 1,
discounted sums vs a loop, golden weights, micro-batch and 1-vs-2-rank invariance."""

import itertools
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft.algorithms.base import StepCounts
from rlft.algorithms.ift import (
    IFTConfig,
    discounted_prefix_sum,
    discounted_suffix_sum,
    greedy_inputs,
    lambda_at,
    micro_batch_loss,
    relation_weights,
)
from rlft.algorithms.sft import sft_loss
from rlft.control import Controller
from rlft.data.collate import pad_rows
from rlft.data.models import ModelConfig, resolve_model
from rlft.data.sampler import EpochSampler
from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs
from tests.helpers import tiny_config


class TorchPolicy:
    """PolicyModel over a plain HF model (what rlft.roles.learner._Policy does through DeepSpeed);
    records every (embeds, logits) of logits_from_embeds."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def logits(self, batch):
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def input_embeddings(self, input_ids):
        with torch.no_grad():
            return self.model.get_input_embeddings()(input_ids)

    def logits_from_embeds(self, embeds, attention_mask):
        logits = self.model(inputs_embeds=embeds, attention_mask=attention_mask).logits
        self.calls.append((embeds, logits))
        return logits


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(resolve_model(ModelConfig(name="tiny"))).float()


def _rows(sizes=((3, 4), (5, 2), (2, 6), (4, 3), (3, 1), (6, 5)), seed=0):
    """Rows of (prompt length, response length) with random token ids of the tiny vocabulary."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for prompt, response in sizes:
        ids = torch.randint(3, 100, (prompt + response,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def _batch():
    return pad_rows(_rows(), pad_id=0)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _loss_and_grads(model, fn):
    model.zero_grad()
    loss = fn()
    loss.backward()
    return loss.detach(), _grads(model)


# ---- the loss against SFT and against its definition ------------------------------------------


def test_lambda_0_gamma_0_is_sft_seq_mean_token_mean(tiny_model):
    """lambda = gamma = 0: the same loss as SFT (per-sequence mean NLL, batch mean) and the same
    gradients, except that the tied embedding table gets its gradient only through the LM head:
    it equals SFT's gradient with the input lookup held constant."""
    batch, policy = _batch(), TorchPolicy(tiny_model)
    counts = StepCounts(num_tokens=0.0, num_sequences=6.0)
    cfg = IFTConfig(max_lambda=0.0, gamma=0.0)
    ift, ift_grads = _loss_and_grads(tiny_model, lambda: micro_batch_loss(policy, batch, cfg, counts)[0])

    def sft(logits):
        return sft_loss(*token_logprobs(logits, batch["labels"]), "seq-mean-token-mean", counts)

    plain, plain_grads = _loss_and_grads(tiny_model, lambda: sft(policy.logits(batch)))
    const_inputs = lambda: sft(policy.logits_from_embeds(policy.input_embeddings(batch["input_ids"]),  # noqa: E731
                                                         batch["attention_mask"]))
    held, held_grads = _loss_and_grads(tiny_model, const_inputs)
    assert ift.item() == plain.item() == held.item()
    table = "model.embed_tokens.weight"
    assert tiny_model.get_input_embeddings().weight is tiny_model.lm_head.weight  # tied
    assert ift_grads.keys() == plain_grads.keys()
    for name in ift_grads:
        assert torch.equal(ift_grads[name], held_grads[name]), name
        if name != table:
            torch.testing.assert_close(ift_grads[name], plain_grads[name], msg=name)
    assert ift_grads[table].abs().sum() > 0  # through the LM head
    assert not torch.allclose(ift_grads[table], plain_grads[table])  # minus the input lookup


def test_pass_2_inputs_are_truth_on_prompt_and_pad_and_the_mixture_on_the_response(tiny_model):
    """Input at response position t: (1 - lambda) e(y*_t) + lambda e(argmax pass1_{t-1})."""
    batch, policy, lam = _batch(), TorchPolicy(tiny_model), 0.3
    micro_batch_loss(policy, batch, IFTConfig(max_lambda=lam), StepCounts(0.0, 6.0))
    (first, _), (mixed, _) = policy.calls
    table = tiny_model.get_input_embeddings().weight.detach()
    ids, response = batch["input_ids"], batch["labels"] != IGNORE_INDEX
    assert torch.equal(first, table[ids])  # pass 1 reads the ground truth
    assert torch.equal(mixed[~response], table[ids][~response])  # bit-identical off the response
    with torch.no_grad():
        predicted = tiny_model(input_ids=ids, attention_mask=batch["attention_mask"]).logits.argmax(-1)
    for b, t in response.nonzero().tolist():
        expected = (1 - lam) * table[ids[b, t]] + lam * table[predicted[b, t - 1]]
        torch.testing.assert_close(mixed[b, t], expected, rtol=0, atol=1e-6)
    assert (predicted[:, :-1] != ids[:, 1:])[response[:, 1:]].any()  # the mixture really differs


def test_no_gradient_reaches_pass_1(tiny_model):
    """Pass 1 builds no graph, the mixed inputs are constants, and the gradient equals that of
    pass 2 alone on precomputed mixed embeddings."""
    batch, policy = _batch(), TorchPolicy(tiny_model)
    cfg, counts = IFTConfig(max_lambda=0.4, gamma=0.9), StepCounts(0.0, 6.0)
    loss, grads = _loss_and_grads(tiny_model, lambda: micro_batch_loss(policy, batch, cfg, counts)[0])
    (e1, logits1), (mixed, logits2) = policy.calls
    assert not e1.requires_grad and logits1.grad_fn is None and not mixed.requires_grad
    assert logits2.requires_grad

    def pass_2_only():
        logprobs, mask = token_logprobs(policy.logits_from_embeds(mixed.clone(), batch["attention_mask"]),
                                        batch["labels"])
        weights = relation_weights(logprobs, mask, cfg)
        return (-logprobs * weights).sum(-1).div(mask.sum(-1)).sum() / counts.num_sequences

    again, again_grads = _loss_and_grads(tiny_model, pass_2_only)
    assert loss.item() == pytest.approx(again.item(), rel=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], again_grads[name], msg=name)


def test_greedy_inputs_shift_and_keep_prompt_and_pad():
    """Position t of a response takes argmax of logits t-1; prompt (label -100) and pad keep their ids."""
    logits = torch.zeros(1, 5, 9)
    for t, token in enumerate([7, 6, 5, 4, 3]):
        logits[0, t, token] = 1.0
    ids = torch.tensor([[1, 2, 3, 4, 0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX]])
    assert greedy_inputs(logits, ids, labels).tolist() == [[1, 2, 6, 5, 0]]


def test_micro_batches_sum_to_the_full_batch_loss_and_gradient(tiny_model):
    """Step-global B: summing the micro-batch losses of any split gives the full-batch loss and gradient
    (weights not detached, so their gradient is included)."""
    full, policy = _batch(), TorchPolicy(tiny_model)
    cfg, counts = IFTConfig(max_lambda=0.3, gamma=0.95), StepCounts(0.0, 6.0)
    loss, grads = _loss_and_grads(tiny_model, lambda: micro_batch_loss(policy, full, cfg, counts)[0])
    rows = _rows()
    tiny_model.zero_grad()
    total = 0.0
    for chunk in (rows[:1], rows[1:4], rows[4:]):
        piece = micro_batch_loss(policy, pad_rows(chunk, pad_id=0), cfg, counts)[0]
        piece.backward()
        total += piece.item()
    assert total == pytest.approx(loss.item(), rel=1e-5)
    for name, grad in _grads(tiny_model).items():
        torch.testing.assert_close(grad, grads[name], atol=1e-6, rtol=1e-4, msg=name)


# ---- relation propagation -----------------------------------------------------------------------


def _loop_suffix(x, gamma):
    out, acc = [], torch.zeros(x.shape[0], dtype=x.dtype)
    for t in range(x.shape[1] - 1, -1, -1):
        acc = x[:, t] + gamma * acc
        out.append(acc)
    return torch.stack(out[::-1], dim=1)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.95, 1.0])
def test_discounted_sums_equal_a_python_loop_for_a_batch(gamma):
    """Every row (the reference package's CPU kernel gets rows after the first wrong), block
    sizes that do and do not divide the length, and the gradient."""
    x = torch.randn(4, 37, dtype=torch.float64, requires_grad=True)
    expected = _loop_suffix(x, gamma)
    seed = torch.randn(4, 37, dtype=torch.float64)
    (expected_grad,) = torch.autograd.grad((expected * seed).sum(), x)
    for chunk in (1, 5, 37, 128):
        got = discounted_suffix_sum(x, gamma, chunk=chunk)
        torch.testing.assert_close(got, expected)
        (grad,) = torch.autograd.grad((got * seed).sum(), x)
        torch.testing.assert_close(grad, expected_grad)
    prefix = discounted_prefix_sum(x, gamma)
    torch.testing.assert_close(prefix, _loop_suffix(x.flip(-1), gamma).flip(-1))


def test_long_sequences_do_not_underflow():
    """No gamma^-t rescaling: the last of 5000 positions still sees its own value."""
    x = torch.ones(1, 5000)
    out = discounted_suffix_sum(x, 0.95)
    assert out[0, -1] == 1.0 and math.isclose(out[0, 0].item(), 1 / (1 - 0.95), rel_tol=1e-4)


def _mask_and_logprobs():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]],
                        dtype=torch.float32)
    logprobs = -torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) * 3 * mask
    return logprobs, mask


SETTINGS = [dict(weighting="paper_cumsum")] + [
    dict(gamma=g, propagation_type=k, propagation_side=s, propagation_norm=n)
    for g, k, s, n in itertools.product((0.0, 0.5, 0.95, 1.0), ("loss", "logps", "mask"), ("left", "right"),
                                        ("L1", "L2", "softmax", "log"))
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_weights_sum_to_n_and_vanish_off_the_response(setting):
    logprobs, mask = _mask_and_logprobs()
    w = relation_weights(logprobs, mask, IFTConfig(**setting))
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert torch.all(w[mask == 0] == 0)
    torch.testing.assert_close(w.sum(-1), mask.sum(-1))  # n_b; 0 for the row without a response
    if setting.get("gamma") == 0.0:
        assert torch.equal(w, mask)


def test_golden_weights():
    """One response of 3 tokens (mask type, so the log-probs do not matter):

    left,  gamma 0.5, L1: W = (1 + .5 + .25, 1 + .5, 1) = (1.75, 1.5, 1); w = 3 W / 4.25
    right, gamma 1,   L1: W = (1, 2, 3) + min W = (2, 3, 4); 1/W = (6, 4, 3)/12; w = 3 (6, 4, 3)/13
    paper_cumsum:         w proportional to (1, 2, 3): w = 3 (1, 2, 3)/6
    """
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    logprobs = -mask
    cases = [
        (dict(gamma=0.5, propagation_type="mask"), [1.75 * 3 / 4.25, 1.5 * 3 / 4.25, 3 / 4.25]),
        (dict(gamma=1.0, propagation_type="mask", propagation_side="right"), [18 / 13, 12 / 13, 9 / 13]),
        (dict(weighting="paper_cumsum"), [0.5, 1.0, 1.5]),
    ]
    for setting, expected in cases:
        w = relation_weights(logprobs, mask, IFTConfig(**setting))
        torch.testing.assert_close(w[0, 1:4], torch.tensor(expected), msg=str(setting))


def test_weights_carry_gradient_unless_detached(tiny_model):
    """Default: the loss is quadratic in the log-probs (w depends on them); detach_weights: linear."""
    logprobs, mask = _mask_and_logprobs()
    logprobs.requires_grad_(True)
    w = relation_weights(logprobs, mask, IFTConfig())
    (grad,) = torch.autograd.grad(w.sum() + (w * w).sum(), logprobs)
    assert grad.abs().sum() > 0
    assert not relation_weights(logprobs.detach(), mask, IFTConfig()).requires_grad


def test_lambda_schedule():
    """linear: min + (max - min) * step / warmup, then max; constant: max at every step."""
    cfg = IFTConfig(lambda_schedule="linear", min_lambda=0.1, max_lambda=0.5, lambda_warmup_steps=4)
    assert [lambda_at(cfg, s) for s in (0, 2, 4, 100)] == pytest.approx([0.1, 0.3, 0.5, 0.5])
    assert lambda_at(IFTConfig(max_lambda=0.3), 7) == 0.3
    with pytest.raises(ValueError, match="lambda_warmup_steps"):
        IFTConfig(lambda_schedule="linear")


# ---- real DeepSpeed learner ranks through the controller ---------------------------------------


def _run_steps(cfg, steps=2):
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        before = ctl.learners.call_lead("trainable_state")
        sampler = EpochSampler(len(ctl.train_examples), seed=0)
        history = []
        for _ in range(steps):
            rows, _ = ctl.spec.build_rows(sampler.next_batch(ctl.train_examples, cfg.train.batch_size), ctl.row_ctx)
            out = ctl.learner_step(rows)
            history.append((out["loss"], out["grad_norm"], ctl.spec.log_metrics(out, 1)["train/ift_lambda"]))
        return history, before, ctl.learners.call_lead("trainable_state"), len(ctl.learners)
    finally:
        ctl.close()


def test_deepspeed_step_two_ranks_equal_one_rank_and_lambda_follows_the_step(tmp_path):
    """Inline 1 rank at ZeRO-2 (2 accumulated micro-batches) == 2 Ray ranks at ZeRO-3 (gloo; the embedding
    that IFT calls outside the model's forward gathers its slices in its own hooks): losses, grad norms,
    weights; lambda warms up 0.1 -> 0.5 with the controller's optimizer step count."""
    algo = {"name": "ift", "lambda_schedule": "linear", "min_lambda": 0.1, "max_lambda": 0.5, "lambda_warmup_steps": 1}
    one = _run_steps(tiny_config(tmp_path, "one", algorithm=algo))
    two = _run_steps(tiny_config(tmp_path, "two", algorithm=algo, runtime={"mode": "local"},
                                 learner={"count": 2, "zero_stage": 3, "zero3_persistence_threshold": 1000}))
    assert one[3] == 1 and two[3] == 2
    for (loss_a, norm_a, lam_a), (loss_b, norm_b, lam_b) in zip(one[0], two[0]):
        assert loss_a == pytest.approx(loss_b, rel=1e-5) and norm_a == pytest.approx(norm_b, rel=1e-4)
        assert lam_a == pytest.approx(lam_b)
    assert [lam for _, _, lam in one[0]] == pytest.approx([0.1, 0.5])
    before, after_one, after_two = one[1], one[2], two[2]
    assert not torch.equal(before["model.embed_tokens.weight"], after_one["model.embed_tokens.weight"])
    for name in after_one:
        torch.testing.assert_close(after_one[name], after_two[name], atol=1e-5, rtol=1e-4, msg=name)
