"""Tree preference optimization (docs/algorithms.md#tpo): golden values, invariances, ties, step weights, the
released code's bugs, data.

The loss is tested as a pure function of rewards and scores, and through `micro_batch_loss` with a
bigram policy (a [V, V] logit table, so autograd reaches real parameters) on rows built by the
algorithm from the tiny model's tokenizer.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from rlft.algorithms import dpo as rlft_dpo
from rlft.algorithms.base import RowContext, StepCounts
from rlft.algorithms.tpo import (
    TPOOfflineConfig,
    build_rows,
    delta_ndcg,
    gains,
    implicit_rewards,
    list_rewards,
    micro_batch_loss,
    pad_list_rows,
    ranking_loss,
    score_labels,
    step_weights,
)
from rlft.data.arith_lists import build_lists
from rlft.data.jsonl import RankedList
from rlft.data.model_config import ModelConfig
from rlft.data.models import resolve_model
from rlft.ops.logprobs import token_logprobs
VOCAB = 128
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(ModelConfig(name="tiny")))


def _cfg(**over) -> TPOOfflineConfig:
    return TPOOfflineConfig(path="unused.jsonl", **{"list_size": 3, **over})


class BigramPolicy:
    """Policy logits = table[token] (trainable), reference = a fixed other table; hidden states
    depend on the trainable table too, so a gradient through them would show up."""

    def __init__(self, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(VOCAB, VOCAB, generator=gen))
        self.ref = torch.randn(VOCAB, VOCAB, generator=gen)
        self.project = torch.randn(VOCAB, 8, generator=gen)

    def logits(self, batch):
        return self.table[batch["input_ids"]]

    def reference_logits(self, batch):
        return self.ref[batch["input_ids"]]

    def logits_and_hidden_states(self, batch):
        logits = self.logits(batch)
        return logits, torch.tanh(logits @ self.project)


def _lists(n: int = 4, size: int = 3, seed: int = 0) -> list[RankedList]:
    return [RankedList(r["prompt"], r["responses"], r["scores"]) for r in build_lists(n, size, seed=seed)]


def _batch(lists, tokenizer, cfg, pad_id=0):
    rows, _ = build_rows(lists, RowContext(tokenizer, False, MAX_LENGTH, cfg))
    return pad_list_rows(rows, pad_id), rows


def _loss_and_grad(model, batch, cfg, counts=None):
    model.table.grad = None
    counts = counts or StepCounts(num_tokens=1.0, num_sequences=float(batch["input_ids"].shape[0]))
    loss, metrics = micro_batch_loss(model, batch, cfg, counts)
    loss.backward()
    return loss.detach(), model.table.grad.clone(), metrics


# ---------------------------------------------------------------- golden values


def test_golden_delta_ndcg_list_of_three():
    """N = 3, scores v = [2, 0, 1], rewards r = [0, 0.3, -0.2], label_mode rank, exponential gain:

    labels psi = #lower scores = [2, 0, 1]; gains G = 2^psi - 1 = [3, 0, 1];
    ranking by r: response 1, 0, 2 -> positions [2, 1, 3], d = 1/log2(1+pos) = [1/log2 3, 1, 1/2];
    IDCG = 3*1 + 1/log2 3 + 0; pairs with v_i > v_j: (0,1), (0,2), (2,1);
    Delta_ij = |G_i - G_j| |d_i - d_j| / IDCG; loss = sum Delta_ij * softplus(-(r_i - r_j));
    NDCG = (3/log2 3 + 0*1 + 1*1/2) / IDCG.
    """
    scores = torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.3, -0.2]], dtype=torch.float64, requires_grad=True)
    valid = torch.ones_like(scores, dtype=torch.bool)
    d = [1 / math.log2(3), 1.0, 0.5]
    G = [3.0, 0.0, 1.0]
    r = [0.0, 0.3, -0.2]
    idcg = 3.0 + 1 / math.log2(3)
    pairs = [(0, 1), (0, 2), (2, 1)]
    delta = {p: abs(G[p[0]] - G[p[1]]) * abs(d[p[0]] - d[p[1]]) / idcg for p in pairs}
    expected = sum(delta[(i, j)] * math.log1p(math.exp(-(r[i] - r[j]))) for i, j in pairs)

    per_list, stats = ranking_loss(rewards, scores, valid, _cfg())
    assert per_list.item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.43780, abs=1e-5)
    assert stats["pairs"].item() == 3 and stats["correct_pairs"].item() == 1  # only (0, 2) is ordered right
    assert stats["ndcg_sum"].item() == pytest.approx((3 * d[0] + 0.5) / idcg, rel=1e-12)
    weights, _, _ = delta_ndcg(rewards.detach(), *_labels_gains(scores, valid), valid)
    for i, j in pairs:  # Delta is symmetric
        assert weights[0, i, j].item() == weights[0, j, i].item() == pytest.approx(delta[(i, j)], rel=1e-12)
    # d loss / d r_i = -sum_j Delta_ij sigmoid(-(r_i - r_j)) + sum_j Delta_ji sigmoid(-(r_j - r_i))
    (grad,) = torch.autograd.grad(per_list.sum(), rewards)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    manual = [0.0, 0.0, 0.0]
    for i, j in pairs:
        g = delta[(i, j)] * sig(-(r[i] - r[j]))
        manual[i] -= g
        manual[j] += g
    torch.testing.assert_close(grad[0], torch.tensor(manual, dtype=torch.float64))


def _labels_gains(scores, valid, mode="rank", kind="exponential"):
    labels = score_labels(scores, valid, mode)
    return labels, gains(labels, kind)


def test_label_modes_and_gains():
    """rank: number of strictly lower scores (ties share); minmax: scaled to [0, label_max]; score: as is.
    Padding rows get label 0 and do not count as lower."""
    scores = torch.tensor([[100.0, -20.0, 40.0, 40.0, 0.0]])
    valid = torch.tensor([[True, True, True, True, False]])
    assert score_labels(scores, valid, "rank").tolist() == [[3.0, 0.0, 1.0, 1.0, 0.0]]
    torch.testing.assert_close(score_labels(scores, valid, "minmax", 6.0), torch.tensor([[6.0, 0.0, 3.0, 3.0, 0.0]]))
    assert gains(torch.tensor([0.0, 1.0, 3.0]), "exponential").tolist() == [0.0, 1.0, 7.0]
    assert gains(torch.tensor([0.0, 1.0, 3.0]), "linear").tolist() == [0.0, 1.0, 3.0]


def test_list_of_two_with_unit_weights_equals_dpo(tokenizer):
    """N = 2, Delta = 1, ASR off: L = -log sigmoid(beta [(l_w - lref_w) - (l_l - lref_l)]), the
    DPO loss with summed response log-probs, computed here from its formula; same gradient."""
    cfg = _cfg(list_size=2, beta=0.3, lambda_weight="none", step_weight="none")
    lists = [RankedList(x.prompt, x.responses[:2], x.scores[:2]) for x in _lists(3)]
    batch, _ = _batch(lists, tokenizer, cfg)
    model = BigramPolicy()
    loss, grad, _ = _loss_and_grad(model, batch, cfg)

    model.table.grad = None
    logp, mask = token_logprobs(model.logits(batch), batch["labels"])
    ref, _ = token_logprobs(model.reference_logits(batch), batch["labels"])
    seq, seq_ref = (logp * mask).sum(-1).view(-1, 2), (ref * mask).sum(-1).view(-1, 2)  # [lists, (chosen, rejected)]
    h = (seq[:, 0] - seq_ref[:, 0]) - (seq[:, 1] - seq_ref[:, 1])
    dpo = -F.logsigmoid(cfg.beta * h).mean()
    dpo.backward()
    torch.testing.assert_close(loss, dpo.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, model.table.grad, rtol=1e-5, atol=1e-8)


def test_list_of_two_equals_rlft_dpo(tokenizer):
    """The same property against rlft's own DPO functions (rlft/algorithms/dpo.py)."""
    cfg = _cfg(list_size=2, beta=0.3, lambda_weight="none", step_weight="none")
    lists = [RankedList(x.prompt, x.responses[:2], x.scores[:2]) for x in _lists(3)]
    batch, _ = _batch(lists, tokenizer, cfg)
    model = BigramPolicy()
    loss, _, _ = _loss_and_grad(model, batch, cfg)
    with torch.no_grad():
        logp, mask = token_logprobs(model.logits(batch), batch["labels"])
        ref, _ = token_logprobs(model.reference_logits(batch), batch["labels"])
        seq, seq_ref = rlft_dpo.sequence_logprobs(logp, mask), rlft_dpo.sequence_logprobs(ref, mask)
        h = rlft_dpo.preference_logits(seq[0::2], seq[1::2], seq_ref[0::2], seq_ref[1::2])
        torch.testing.assert_close(loss, rlft_dpo.sigmoid_loss(h, cfg.beta).mean(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- invariances (permutations, micro-batches)


@pytest.mark.parametrize("tied_rewards", [False, True])
def test_permuting_a_list_permutes_nothing_but_the_gradient_rows(tied_rewards):
    """Permutation invariance of the pure loss, with tied scores, and with every reward tied (pi_theta = pi_ref)."""
    gen = torch.Generator().manual_seed(3)
    scores = torch.tensor([[3.0, 1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 4.0, 4.0, 0.0]])
    rewards = torch.zeros(2, 5) if tied_rewards else torch.randn(2, 5, generator=gen)
    valid = torch.tensor([[True] * 5, [True, True, True, True, False]])
    perm = torch.tensor([4, 2, 0, 3, 1])
    for cfg in (_cfg(), _cfg(label_mode="minmax", gain="linear")):
        r1 = rewards.clone().requires_grad_()
        l1, _ = ranking_loss(r1, scores, valid, cfg)
        (g1,) = torch.autograd.grad(l1.sum(), r1)
        r2 = rewards[:, perm].clone().requires_grad_()
        l2, _ = ranking_loss(r2, scores[:, perm], valid[:, perm], cfg)
        (g2,) = torch.autograd.grad(l2.sum(), r2)
        torch.testing.assert_close(l2, l1, rtol=1e-6, atol=0.0)
        torch.testing.assert_close(g2, g1[:, perm], rtol=1e-6, atol=1e-9)
        assert l1.min() > 0  # at pi_theta = pi_ref the ties count as mis-ordered: training can start


@pytest.mark.parametrize("step_weight", ["none", "1-cos"])
def test_permuting_rows_of_each_list_leaves_loss_and_update_unchanged(tokenizer, step_weight):
    """Permutation invariance through the model: the rows of every list shuffled (scores with them), ASR on and off."""
    cfg = _cfg(step_weight=step_weight)
    lists = _lists(4)
    shuffled = [RankedList(x.prompt, [x.responses[i] for i in (2, 0, 1)], [x.scores[i] for i in (2, 0, 1)])
                for x in lists]
    model = BigramPolicy()
    loss, grad, _ = _loss_and_grad(model, _batch(lists, tokenizer, cfg)[0], cfg)
    loss2, grad2, _ = _loss_and_grad(model, _batch(shuffled, tokenizer, cfg)[0], cfg)
    torch.testing.assert_close(loss2, loss, rtol=1e-6, atol=1e-8)
    # float32 sums in another order: entries near zero differ by ~1e-8 (seen once under load)
    torch.testing.assert_close(grad2, grad, rtol=1e-5, atol=1e-7)


def test_micro_batches_of_one_list_sum_to_the_full_step(tokenizer):
    """Four lists (one of them short, padded) in one micro-batch vs four micro-batches of one list,
    each normalised by the step's counts: same loss and same summed gradient."""
    cfg = _cfg(list_size=4)
    lists = _lists(4, size=4)
    lists[2] = RankedList(lists[2].prompt, lists[2].responses[:3], lists[2].scores[:3])
    full, rows = _batch(lists, tokenizer, cfg)
    counts = StepCounts(num_tokens=1.0, num_sequences=16.0)
    model = BigramPolicy()
    loss, grad, metrics = _loss_and_grad(model, full, cfg, counts)
    total, summed, pairs = 0.0, torch.zeros_like(grad), 0.0
    for start in range(0, 16, 4):
        part, part_grad, part_metrics = _loss_and_grad(model, pad_list_rows(rows[start:start + 4], 0), cfg, counts)
        total, summed, pairs = total + part, summed + part_grad, pairs + part_metrics["pairs"]
    torch.testing.assert_close(total, loss, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(summed, grad, rtol=1e-5, atol=1e-7)
    assert pairs == metrics["pairs"]


def test_a_list_split_across_micro_batches_is_refused(tokenizer):
    cfg = _cfg()
    _, rows = _batch(_lists(2), tokenizer, cfg)
    with pytest.raises(ValueError, match="whole lists of 3 rows"):
        micro_batch_loss(BigramPolicy(), pad_list_rows(rows[1:4], 0), cfg, StepCounts(1.0, 6.0))


def test_nll_coef_adds_the_token_mean_nll_of_each_lists_best_responses(tokenizer):
    """nll_coef c: loss = ranking loss + c * (1 / #lists) sum_lists mean_{best y} (-sum_t log pi(y_t) / |y|);
    a list with two tied best responses averages them."""
    cfg = _cfg()
    lists = _lists(2)
    lists[1] = RankedList(lists[1].prompt, lists[1].responses, [0.2, 0.2, 0.1])
    batch, _ = _batch(lists, tokenizer, cfg)
    model = BigramPolicy()
    base, _, metrics = _loss_and_grad(model, batch, cfg)
    with_nll, _, _ = _loss_and_grad(model, batch, _cfg(nll_coef=0.5))
    logp, mask = token_logprobs(model.logits(batch), batch["labels"])
    per_row = (-(logp * mask).sum(-1) / mask.sum(-1)).detach()
    expected_nll = (per_row[0] + (per_row[3] + per_row[4]) / 2) / 2
    torch.testing.assert_close(with_nll - base, 0.5 * expected_nll)
    assert metrics["best_nll_sum"] / metrics["lists"] == pytest.approx(expected_nll.item(), rel=1e-6)


# ---------------------------------------------------------------- ties


def test_tied_scores_give_zero_loss_and_zero_gradient(tokenizer):
    cfg = _cfg()
    lists = [RankedList(x.prompt, x.responses, [0.5, 0.5, 0.5]) for x in _lists(2)]
    loss, grad, metrics = _loss_and_grad(BigramPolicy(), _batch(lists, tokenizer, cfg)[0], cfg)
    assert loss.item() == 0.0 and metrics["pairs"] == 0.0
    assert torch.count_nonzero(grad) == 0


def test_a_tied_pair_contributes_nothing_beside_the_others():
    """v = [1, 1, 0] with unit weights: exactly the (0, 2) and (1, 2) terms, no log 2 for the tie."""
    rewards = torch.tensor([[0.4, -0.1, 0.2]])
    loss, stats = ranking_loss(rewards, torch.tensor([[1.0, 1.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool),
                               _cfg(lambda_weight="none"))
    expected = F.softplus(-(rewards[0, 0] - rewards[0, 2])) + F.softplus(-(rewards[0, 1] - rewards[0, 2]))
    torch.testing.assert_close(loss[0], expected)
    assert stats["pairs"].item() == 2


# ---------------------------------------------------------------- adaptive step reward


def _states(*vectors):
    return torch.tensor(vectors, dtype=torch.float64)


def test_step_weights_follow_the_configured_rule():
    """One list: response 0 is the anchor (best), response 1 repeats the anchor's step 0 and has an
    orthogonal step 1: cos = [1, 0]. Weights are normalised to mean 1 over a response's steps:
    1-cos: omega = [0, 1] -> [0, 2]; 1+cos: omega = [2, 1] -> [4/3, 2/3]; none: [1, 1].
    The anchor gets [1, 1] under every rule."""
    states = torch.stack([_states([1, 0], [0, 1]), _states([1, 0], [1, 0])]).unsqueeze(0)  # [1, 2, K=2, H=2]
    present = torch.ones(1, 2, 2, dtype=torch.bool)
    anchor = torch.tensor([[True, False]])
    expected = {"1-cos": [0.0, 2.0], "1+cos": [4 / 3, 2 / 3], "none": [1.0, 1.0]}
    for rule, second in expected.items():
        w = step_weights(states, present, anchor, rule)
        torch.testing.assert_close(w[0], torch.tensor([[1.0, 1.0], second], dtype=torch.float64))


def test_step_weights_clamp_to_the_anchors_last_step_and_average_tied_anchors():
    """Anchors 0 and 1 (tied best) have 2 steps, response 2 has 3. The anchor state of a step is the
    mean of the anchors' states: step 0 ([1,0] + [1,0]) / 2 = [1,0], step 1 ([0,1] + [1,1]) / 2 = [.5,1];
    response 2's step 2 is compared with the anchors' last step. Response 2 = [1,0], [.5,1], [.5,1]:
    cos = 1 everywhere, every step matches, so its weights fall back to uniform. With its last step
    [1,-.5] (orthogonal to [.5,1]): 1-cos = [0, 0, 1] -> [0, 0, 3]."""
    states = torch.stack([
        _states([1, 0], [0, 1], [0, 0]), _states([1, 0], [1, 1], [0, 0]), _states([1, 0], [0.5, 1], [0.5, 1]),
    ]).unsqueeze(0)
    present = torch.tensor([[[True, True, False], [True, True, False], [True, True, True]]])
    anchor = torch.tensor([[True, True, False]])
    w = step_weights(states, present, anchor, "1-cos")
    torch.testing.assert_close(w[0, 2], torch.ones(3, dtype=torch.float64))
    states[0, 2, 2] = torch.tensor([1.0, -0.5])
    w = step_weights(states, present, anchor, "1-cos")
    torch.testing.assert_close(w[0, 2], torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(w[0, :2], torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64))


def test_equal_step_weights_give_sequence_and_mean_of_step_means():
    """Equal step weights: steps of 2 and 3 tokens with log-ratios S = [1, 3], n = [2, 3], w = 1, beta = 0.5:
    sum -> beta (1 + 3) = 2 (the sequence log-ratio); mean -> beta (1/2 + 3/3) / 2 = 0.375."""
    S, n, w = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 3.0]), torch.ones(2)
    assert implicit_rewards(S, n, w, 0.5, "sum").item() == pytest.approx(2.0)
    assert implicit_rewards(S, n, w, 0.5, "mean").item() == pytest.approx(0.375)


def test_asr_rewards_use_detached_hidden_states_and_the_step_ids(tokenizer):
    """Through list_rewards: with 1-cos, a response that repeats the anchor's trace except its last step
    puts all its weight on that step; the hidden states get no gradient."""
    cfg = _cfg(list_size=2, step_weight="1-cos")
    lists = [RankedList("Q: 1+2\n", ["1+2=3\nA: 3", "1+2=3\nA: 4"], [1.0, 0.0])]
    batch, _ = _batch(lists, tokenizer, cfg)
    log_ratio = torch.zeros(batch["step_ids"].shape)
    log_ratio[1, batch["step_ids"][1] == 0] = 0.7  # shared step of the worse response
    log_ratio[1, batch["step_ids"][1] == 1] = -0.2  # its own last step (tokens of "A: 4" + EOS)
    log_ratio.requires_grad_()
    hidden = torch.zeros(*batch["step_ids"].shape, 2, requires_grad=True)
    with torch.no_grad():
        hidden[:, :, 0] = 1.0
        hidden[1, batch["step_ids"][1] == 1] = torch.tensor([0.0, 1.0])  # its last step is unlike the anchor's
    scores, valid = batch["scores"].view(1, 2), batch["valid"].bool().view(1, 2)
    rewards = list_rewards(log_ratio, batch["step_ids"], hidden, scores, valid, cfg)
    last_tokens = int((batch["step_ids"][1] == 1).sum())
    # weights [0, 2]: beta * 2 * (-0.2 * tokens of step 1); the shared 0.7s do not count
    assert rewards[0, 1].item() == pytest.approx(cfg.beta * 2 * -0.2 * last_tokens, rel=1e-6)
    rewards.sum().backward()
    assert hidden.grad is None and log_ratio.grad is not None


def test_asr_gradient_does_not_flow_through_hidden_states(tokenizer):
    """The bigram policy's hidden states depend on its table: the update equals the one with the
    hidden states detached by hand."""
    cfg = _cfg(step_weight="1+cos")
    batch, _ = _batch(_lists(3), tokenizer, cfg)
    model = BigramPolicy()
    _, grad, _ = _loss_and_grad(model, batch, cfg)

    class Detached(BigramPolicy):
        def logits_and_hidden_states(self, batch):
            logits, hidden = super().logits_and_hidden_states(batch)
            return logits, hidden.detach()

    other = Detached()
    other.table = model.table
    _, grad2, _ = _loss_and_grad(other, batch, cfg)
    torch.testing.assert_close(grad2, grad)


# ------------------------------------------- the released code's bugs, absent (docs/algorithms.md#tpo)


def test_bug1_logprobs_score_each_token_with_the_previous_position(tokenizer):
    """Bug 1: position t must score token t+1. A policy that gives the true next token logit 4 (0 for
    the rest) and a uniform reference: every response token's log-ratio is 4 - log(e^4 + V - 1) + log V,
    so the margin of two responses is beta * (n_0 - n_1) * that. The unshifted gather scores each token
    with its own position and gives another value."""
    cfg = _cfg(list_size=2, lambda_weight="none", step_weight="none", beta=1.0)
    lists = [RankedList("Q: 1+2\n", ["1+2=3\nA: 3", "A: 3"], [1.0, 0.0])]
    batch, _ = _batch(lists, tokenizer, cfg)

    class NextToken:
        def logits(self, b):
            logits = torch.zeros(*b["input_ids"].shape, VOCAB)
            logits[:, :-1].scatter_(-1, b["input_ids"][:, 1:].unsqueeze(-1), 4.0)
            return logits

        def reference_logits(self, b):
            return torch.zeros(*b["input_ids"].shape, VOCAB)

    _, metrics = micro_batch_loss(NextToken(), batch, cfg, StepCounts(1.0, 2.0))
    per_token = 4.0 - math.log(math.exp(4.0) + VOCAB - 1) + math.log(VOCAB)
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in lists[0].responses]
    assert metrics["margin_sum"] == pytest.approx((lengths[0] - lengths[1]) * per_token, rel=1e-5)


def test_bug2_each_row_is_prompt_plus_its_own_response(tokenizer):
    """Bug 2: no aliasing of the prompt token list: row i is prompt + response i + EOS, nothing else,
    and changing one row's tokens leaves the others alone."""
    cfg = _cfg()
    item = _lists(1)[0]
    _, rows = _batch([item], tokenizer, cfg)
    prompt = tokenizer(item.prompt)["input_ids"]
    for row, response in zip(rows, item.responses):
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == prompt + response_ids + [tokenizer.eos_token_id]
    rows[0]["input_ids"].append(7)
    assert all(len(r["input_ids"]) < len(rows[0]["input_ids"]) for r in rows[1:])


def test_bug3_loss_falls_as_the_ranking_gets_right():
    """Bug 3: no -log sigmoid(beta * rank_loss) wrapper: the loss decreases monotonically to 0 as the
    better response's reward rises, and gradient descent raises it."""
    scores, valid = torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool)
    values = []
    for margin in (-4.0, -1.0, 0.0, 1.0, 4.0, 30.0):
        r = torch.tensor([[margin, 0.0]], requires_grad=True)
        loss, _ = ranking_loss(r, scores, valid, _cfg(lambda_weight="none"))
        (g,) = torch.autograd.grad(loss.sum(), r)
        assert g[0, 0] < 0 < g[0, 1] or margin == 30.0
        values.append(loss.item())
    assert values == sorted(values, reverse=True) and values[-1] < 1e-12


def test_bug4_padding_changes_nothing(tokenizer):
    """Bug 4: the mask is used: another pad token id, or extra padding, leaves loss and gradient unchanged."""
    cfg = _cfg()
    _, rows = _batch(_lists(2), tokenizer, cfg)
    model = BigramPolicy()
    loss, grad, _ = _loss_and_grad(model, pad_list_rows(rows, 0), cfg)
    loss2, grad2, _ = _loss_and_grad(model, pad_list_rows(rows, 17), cfg)
    longer = [dict(r) for r in rows]
    longer[0] = {**rows[0], "input_ids": rows[0]["input_ids"] + [5] * 6, "labels": rows[0]["labels"] + [-100] * 6,
                 "step_ids": rows[0]["step_ids"] + [-1] * 6}
    loss3, grad3, _ = _loss_and_grad(model, pad_list_rows(longer, 0), cfg)
    for other_loss, other_grad in ((loss2, grad2), (loss3, grad3)):
        torch.testing.assert_close(other_loss, loss)
        torch.testing.assert_close(other_grad, grad)
