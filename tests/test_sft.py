"""SFT loss: hand-derived golden values and split invariance of the step-global normaliser."""

import math

import torch

from rlft.algorithms.base import StepCounts
from rlft.algorithms.sft import sft_loss
from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs


def _two_sequence_batch():
    """Vocab {0, 1}; sequence A = [p, 0, 1] with prompt p, sequence B = [p, 1, pad].

    Logits are chosen so each next-token distribution is easy to write down:
      A: position 0 predicts label 0 with logits (ln 3, 0)  -> p = 3/4, NLL = ln(4/3)
         position 1 predicts label 1 with logits (0, 0)     -> p = 1/2, NLL = ln 2
      B: position 0 predicts label 1 with logits (ln 3, 0)  -> p = 1/4, NLL = ln 4
         position 1 is padding (ignored).
    """
    ln3 = math.log(3.0)
    logits = torch.tensor(
        [
            [[ln3, 0.0], [0.0, 0.0], [0.0, 0.0]],
            [[ln3, 0.0], [5.0, -5.0], [0.0, 0.0]],
        ]
    )
    labels = torch.tensor([[IGNORE_INDEX, 0, 1], [IGNORE_INDEX, 1, IGNORE_INDEX]])
    return logits, labels


def test_golden_token_mean():
    """token-mean = (ln(4/3) + ln 2 + ln 4) / 3 = ln(32/3) / 3."""
    logits, labels = _two_sequence_batch()
    logprobs, mask = token_logprobs(logits, labels)
    loss = sft_loss(logprobs, mask, "token-mean", StepCounts(num_tokens=3, num_sequences=2))
    assert math.isclose(loss.item(), math.log(32 / 3) / 3, rel_tol=1e-6)


def test_golden_seq_mean_token_mean():
    """seq-mean-token-mean = ((ln(4/3) + ln 2)/2 + ln 4) / 2 = (ln(8/3)/2 + ln 4) / 2."""
    logits, labels = _two_sequence_batch()
    logprobs, mask = token_logprobs(logits, labels)
    loss = sft_loss(logprobs, mask, "seq-mean-token-mean", StepCounts(num_tokens=3, num_sequences=2))
    assert math.isclose(loss.item(), (math.log(8 / 3) / 2 + math.log(4)) / 2, rel_tol=1e-6)


def test_prompt_and_padding_carry_no_loss_or_gradient():
    logits, labels = _two_sequence_batch()
    logits.requires_grad_(True)
    logprobs, mask = token_logprobs(logits, labels)
    sft_loss(logprobs, mask, "token-mean", StepCounts(3, 2)).backward()
    assert torch.all(logits.grad[1, 1] == 0)  # predicts the padded label
    assert torch.all(logits.grad[:, 2] == 0)  # the last position predicts nothing


def test_micro_batch_split_sums_to_full_batch_loss_and_gradient():
    """With step-global normalisers, summing per-micro-batch losses reproduces the full batch."""
    torch.manual_seed(0)
    logits = torch.randn(6, 7, 11)
    labels = torch.randint(0, 11, (6, 7))
    labels[:, :2] = IGNORE_INDEX
    labels[2, 5:] = IGNORE_INDEX
    for mode in ("token-mean", "seq-mean-token-mean"):
        full_logits = logits.clone().requires_grad_(True)
        lp, m = token_logprobs(full_logits, labels)
        counts = StepCounts(num_tokens=float(m.sum()), num_sequences=6.0)
        full = sft_loss(lp, m, mode, counts)
        full.backward()
        split_logits = logits.clone().requires_grad_(True)
        total = 0.0
        for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
            lp, m = token_logprobs(split_logits[rows], labels[rows])
            piece = sft_loss(lp, m, mode, counts)
            piece.backward()
            total += piece.item()
        assert math.isclose(total, full.item(), rel_tol=1e-5)
        assert torch.allclose(split_logits.grad, full_logits.grad, atol=1e-7)
