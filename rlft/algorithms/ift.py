"""IFT, intuitive fine-tuning (Hua et al., https://arxiv.org/abs/2405.11870; docs/algorithms.md#ift).

SFT scores token t after the ground-truth prefix, but at inference the model reads its own
predictions. IFT feeds it, at every response position, a mix of the ground truth and its own
one-step prediction from the ground-truth prefix (a "temporal residual connection"):

    pass 1 (no grad):   y^_t  = argmax_v pi_theta(v | E(y*_<t))                 greedy, one step ahead
    mixed inputs:       E'_t  = (1 - lambda) E(y*_t) + lambda E(y^_t)           response positions only
    pass 2 (grad):      l_t   = log pi_theta(y*_t | E'_<t)                       ground-truth labels
    loss:               L     = (1/B) sum_b (1/n_b) sum_{t in resp} w_bt (-l_bt)

E is the input-embedding table taken as a constant (the reference code keeps a gradient-free copy
of it, re-synced from the policy); a tied table still gets its gradient through the LM head.
Prompt and pad inputs are E(y*) unchanged. lambda = 0 and gamma = 0 is SFT with the
seq-mean-token-mean reduction. B is the step-global number of sequences (StepCounts).

Relation propagation (the reference code's weights), with m the response mask and
n_b = sum_t m_bt:

    c_t = -l_t / n_b (type loss), -l_t (logps) or m_t (mask); 0 off the response
    side left:   W_t = sum_{k>=t} gamma^(k-t) c_k        L1: W    L2: W^2    softmax: e^W    log: log(1 + W)
    side right:  W_t = sum_{k<=t} gamma^(t-k) c_k + s_b  L1: 1/W  L2: 1/W^2  softmax: e^(1/W) log: 1/log(1 + W)
    w_t = n_b v_t / sum_k v_k over the response (v: the normed W), 0 off it; gamma = 0: w = m

The weights are built from the pass-2 log-probs and are NOT detached by default (the loss is then
quadratic in l, as in the reference code); `detach_weights` makes them constants. s_b is the
smallest positive W_t of sequence b (the reference code takes it over the whole batch, which
would tie a sequence's weights to its micro-batch). The discounted sums are plain torch
(`discounted_suffix_sum`): the CPU kernel of the package the reference code uses is wrong for
every row after the first (docs/algorithms.md#ift).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from rlft.algorithms.base import AlgorithmSpec, PolicyModel, RowContext, StepCounts
from rlft.data.collate import encode_sft
from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs
from rlft.ops.reductions import seq_mean_token_mean
from rlft.schema import Section
from rlft.types import Example


class IFTConfig(Section):
    name: Literal["ift"] = "ift"
    max_lambda: float = Field(
        0.2, ge=0.0, le=1.0, description="lambda: weight of the model's own prediction in the mixed input embeddings "
                                         "(constant, or the value reached by the warm-up)."
    )
    lambda_schedule: Literal["constant", "linear"] = Field(
        "constant", description="constant: max_lambda; linear: min_lambda -> max_lambda over lambda_warmup_steps."
    )
    min_lambda: float = Field(0.0, ge=0.0, le=1.0, description="lambda at optimizer step 0 of the linear warm-up.")
    lambda_warmup_steps: int = Field(0, ge=0, description="Optimizer steps of the linear lambda warm-up.")
    weighting: Literal["relation", "paper_cumsum"] = Field(
        "relation",
        description="relation: the reference code's relation propagation (gamma, propagation_*); paper_cumsum: "
                    "the v3 paper's double sum, token t counted once per start n <= t, i.e. w_t proportional to "
                    "its 1-based response position (renormalised to n_b); unverified reading of the paper.",
    )
    gamma: float = Field(0.95, ge=0.0, le=1.0, description="Discount of relation propagation (0: w = 1, SFT weighting).")
    propagation_type: Literal["loss", "logps", "mask"] = Field(
        "loss", description="What is propagated: -logprob / n_b, -logprob, or the response mask."
    )
    propagation_side: Literal["left", "right"] = Field(
        "left", description="left: discounted suffix sums (later tokens weigh on earlier ones); right: prefix sums, "
                            "inverted norms."
    )
    propagation_norm: Literal["L1", "L2", "softmax", "log"] = Field(
        "L1", description="Map from the discounted sums to weights before renormalising to n_b per sequence."
    )
    detach_weights: bool = Field(False, description="Treat the weights as constants (the reference code does not).")

    @model_validator(mode="after")
    def _warmup_needs_steps(self) -> "IFTConfig":
        if self.lambda_schedule == "linear" and self.lambda_warmup_steps == 0:
            raise ValueError("lambda_schedule 'linear' needs lambda_warmup_steps > 0")
        return self


def lambda_at(cfg: IFTConfig, step: int) -> float:
    """lambda at optimizer step `step` (StepCounts.step, 0-based): constant, or linear warm-up then constant."""
    if cfg.lambda_schedule == "constant":
        return cfg.max_lambda
    progress = min(1.0, step / cfg.lambda_warmup_steps)
    return cfg.min_lambda + (cfg.max_lambda - cfg.min_lambda) * progress


# ---- discounted sums (plain torch, differentiable, any batch size) ------------------------------


def discounted_suffix_sum(x: torch.Tensor, gamma: float, chunk: int = 128) -> torch.Tensor:
    """W_t = sum_{k>=t} gamma^(k-t) x_k along the last dim of x [B, T].

    Inside each block of `chunk` positions it is one matmul with the matrix gamma^(k-t) (k >= t);
    blocks are chained right to left, W_t += gamma^(C-t) W_(next block start). No gamma^-t
    rescaling, so nothing under- or overflows for long sequences.
    """
    batch, length = x.shape
    size = max(1, min(chunk, length))
    blocks = -(-length // size)
    xs = F.pad(x, (0, blocks * size - length)).view(batch, blocks, size)  # [B, n, C]
    g = torch.tensor(gamma, dtype=x.dtype, device=x.device)
    pos = torch.arange(size, device=x.device)
    lag = pos[None, :] - pos[:, None]  # [C(t), C(k)] = k - t
    decay = torch.pow(g, lag.clamp(min=0)) * (lag >= 0)  # [C, C]: gamma^(k-t) on and above the diagonal
    local = xs @ decay.T  # [B, n, C]: sums inside each block
    to_next = torch.pow(g, size - pos)  # [C]: gamma^(C-t), from t to the next block's first position
    out, carry = [], torch.zeros(batch, 1, dtype=x.dtype, device=x.device)
    for j in range(blocks - 1, -1, -1):
        block = local[:, j] + to_next * carry  # [B, C]
        out.append(block)
        carry = block[:, :1]
    return torch.cat(out[::-1], dim=-1)[:, :length]


def discounted_prefix_sum(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """W_t = sum_{k<=t} gamma^(t-k) x_k along the last dim of x [B, T]."""
    return discounted_suffix_sum(x.flip(-1), gamma).flip(-1)


# ---- weights and loss (pure) --------------------------------------------------------------------


def _renormalise(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero off the response, then scale each row so it sums to n_b = sum_t m_t."""
    values = values * mask
    return values * mask.sum(-1, keepdim=True) / values.sum(-1, keepdim=True).clamp(min=1e-12)


def _masked_exp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(x - max over the response): a softmax numerator; _renormalise supplies the denominator."""
    x = torch.where(mask > 0, x, torch.zeros_like(x))
    top = torch.where(mask > 0, x, torch.full_like(x, float("-inf"))).amax(-1, keepdim=True)
    return torch.exp(x - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))


def relation_weights(logprobs: torch.Tensor, mask: torch.Tensor, cfg: IFTConfig) -> torch.Tensor:
    """w [B, T-1]: sum_t w_t = n_b per sequence, 0 on prompt and pad (see the module doc)."""
    if cfg.weighting == "paper_cumsum":
        return _renormalise(torch.cumsum(mask, -1), mask)  # 1-based response position
    if cfg.gamma == 0:
        return mask.clone()  # the reference code returns ones everywhere; mask explicitly (docs/algorithms.md#ift)
    n = mask.sum(-1, keepdim=True).clamp(min=1.0)  # [B, 1]
    items = {"loss": -logprobs / n, "logps": -logprobs, "mask": mask}[cfg.propagation_type] * mask  # [B, T-1]
    if cfg.propagation_side == "left":
        sums = discounted_suffix_sum(items, cfg.gamma)
        normed = {"L1": lambda w: w, "L2": lambda w: w**2, "softmax": lambda w: _masked_exp(w, mask),
                  "log": torch.log1p}[cfg.propagation_norm](sums)
        return _renormalise(normed, mask)
    sums = discounted_prefix_sum(items, cfg.gamma)
    positive = torch.where((mask > 0) & (sums > 0), sums, torch.full_like(sums, float("inf")))
    shift = positive.amin(-1, keepdim=True)  # [B, 1]: smallest positive sum of the sequence
    shift = torch.where(torch.isfinite(shift), shift, torch.ones_like(shift))
    sums = torch.where(mask > 0, sums + shift, torch.ones_like(sums))  # > 0 wherever it is inverted
    normed = {"L1": lambda w: 1 / w, "L2": lambda w: w**-2, "softmax": lambda w: _masked_exp(1 / w, mask),
              "log": lambda w: 1 / torch.log1p(w)}[cfg.propagation_norm](sums)
    return _renormalise(normed, mask)


def greedy_inputs(pass1_logits: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token ids [B, T] of the model's own predictions at response positions, ground truth elsewhere.

    Position t of a response holds argmax pass1_logits[t-1] (the prediction from the true prefix).
    """
    predicted = torch.cat([input_ids[:, :1], pass1_logits[:, :-1].argmax(-1)], dim=1)  # [B, T]
    return torch.where(labels != IGNORE_INDEX, predicted, input_ids)


def mix_embeddings(truth: torch.Tensor, predicted: torch.Tensor, response: torch.Tensor, lam: float) -> torch.Tensor:
    """E' = (1 - lambda) E(y*) + lambda E(y^) where response [B, T] is true; E(y*) bit-exact elsewhere."""
    mixed = (1.0 - lam) * truth + lam * predicted  # [B, T, D]
    return torch.where(response.unsqueeze(-1), mixed, truth)


def ift_loss(logprobs: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor, counts: StepCounts) -> torch.Tensor:
    """(1/B) sum_b (1/n_b) sum_t w_bt (-l_bt), B the step-global number of sequences."""
    return seq_mean_token_mean(-logprobs * weights, mask, counts.num_sequences)


def micro_batch_loss(
    model: PolicyModel, batch: dict[str, torch.Tensor], cfg: IFTConfig, counts: StepCounts
) -> tuple[torch.Tensor, dict[str, float]]:
    input_ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    lam = lambda_at(cfg, counts.step)
    truth = model.input_embeddings(input_ids)  # [B, T, D], a constant
    with torch.no_grad():  # pass 1: greedy predictions are constants
        pass1 = model.logits_from_embeds(truth, attention)  # [B, T, V]
        clean_logprobs, _ = token_logprobs(pass1, labels)
        predicted_ids = greedy_inputs(pass1, input_ids, labels)  # [B, T]
    mixed = mix_embeddings(truth, model.input_embeddings(predicted_ids), labels != IGNORE_INDEX, lam)
    logprobs, mask = token_logprobs(model.logits_from_embeds(mixed, attention), labels)  # [B, T-1]
    weights = relation_weights(logprobs.detach() if cfg.detach_weights else logprobs, mask, cfg)
    loss = ift_loss(logprobs, weights, mask, counts)
    tokens = float(mask.sum().item())
    response = labels[:, 1:] != IGNORE_INDEX
    return loss, {
        "nll_sum": float(-clean_logprobs.sum().item()), "mixed_nll_sum": float(-(logprobs * mask).sum().item()),
        "greedy_match": float(((predicted_ids == input_ids)[:, 1:] & response).sum().item()),
        "lambda_tokens": lam * tokens, "tokens": tokens,
    }


def build_rows(examples: list[Example], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    """Prompt + reference response rows, as for SFT (the response is cut to train.max_length)."""
    if any(ex.response is None for ex in examples):
        raise ValueError("this task has no reference responses; IFT needs them")
    return [encode_sft(ctx.tokenizer, ex.prompt, ex.response, ctx.max_length, ctx.chat) for ex in examples], {}


def log_metrics(sums: dict[str, float], steps: int) -> dict[str, float]:
    """Per response token: NLL on ground-truth inputs (pass 1, SFT's train/nll) and on the mixed
    inputs (pass 2), share of greedy predictions equal to the ground truth, lambda."""
    tokens = max(sums["tokens"], 1.0)
    return {"train/nll": sums["nll_sum"] / tokens, "train/nll_mixed": sums["mixed_nll_sum"] / tokens,
            "train/greedy_match": sums["greedy_match"] / tokens, "train/ift_lambda": sums["lambda_tokens"] / tokens}


SPEC = AlgorithmSpec(
    summary="IFT (intuitive fine-tuning): SFT rows, inputs mixed with the model's own predictions",
    name="ift", config_cls=IFTConfig, source="dataset", micro_batch_loss=micro_batch_loss,
    build_rows=build_rows, log_metrics=log_metrics,
)
