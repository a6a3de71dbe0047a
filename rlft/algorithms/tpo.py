"""Tree preference optimization (TPO; Liao et al., arXiv 2410.12854), offline from ranked lists (spec 2).

Not TRL's `TPOTrainer`, which is *triple* preference optimization, a different method.

A prompt x comes with a list of N responses y_1..y_N and scores v_1..v_N (higher is better). The
implicit reward of a response is beta times its log-ratio to the reference policy, and the
loss ranks the list by it, pairwise-decomposed and lambda-weighted (LiPO-lambda form, spec 2.2):

    L = (1 / #lists) sum_lists sum_{i,j: v_i > v_j} Delta_ij * -log sigmoid(r_i - r_j)

    r_i = beta * sum_k w_ik * S_ik                       (step_aggregation: sum; default)
    r_i = beta * sum_k w_ik * S_ik / n_ik / sum_k w_ik   (step_aggregation: mean; the released code)

S_ik: sum over the tokens of step k of log pi_theta - log pi_ref; n_ik: its token count. Tied
scores make no pair, so they contribute nothing. With w = 1 and `sum`, r_i = beta * sequence
log-ratio, and a list of two with Delta = 1 is exactly DPO.

Lambda weights (`lambda_weight: delta-ndcg`): Delta_ij = |G_i - G_j| * |d_i - d_j| / IDCG, the change
of NDCG when i and j swap places in the ranking by the current (detached) rewards. Gains
G = 2^psi - 1 (or psi) of labels psi from the scores (`label_mode`, because raw TPO scores in
[-100, 100] overflow 2^v); discount d = 1 / log2(1 + position), 1-based; IDCG = DCG of the ideal
order. Ties in the current rewards count as mis-ordered (the worse label is placed first), so
that training starts at pi_theta = pi_ref, where every reward is 0 (a tie-averaged rank would make
every Delta 0 there); responses tied in both reward and label share their mean discount.

Adaptive step reward (spec 2.3, `step_weight`): w_ik from the cosine similarity between the mean
last-layer hidden state (detached) of step k of y_i and of the same step of the anchor, the
list's best-scored response (several tied best: their mean); past the anchor's last step its last
step is used. `1-cos` (default) up-weights steps that differ from the anchor, the paper's stated
intent; `1+cos` is the released code; `none` gives w = 1. Weights are normalised to mean 1 over
a response's steps; the anchor itself, and a response whose steps all match the anchor, get
w = 1. Steps end at `step_delimiter` (one step per line for the arith traces), which belongs to
the step it ends; EOS belongs to the last step.

`nll_coef` (not part of TPO; as RPO and DPO's nll_coef) adds the token-mean NLL of each list's
best-scored response(s). Normalisers are step-global (number of lists in the optimisation step),
and a list never spans two micro-batches (train.micro_batch_size is a multiple of list_size), so
micro-batches and ranks sum to the full-step loss. Lists shorter than list_size are padded with
loss-free rows.

Like DPO, the loss can lower the best responses' likelihood along with the others' when the
responses share most of their tokens; on the tiny arith recipe beta = 0.1, or the `mean`
aggregation (per-token rewards need far larger log-ratios for the same margin), collapses greedy
decoding, while beta = 0.5 with `1-cos` ASR improves it (configs/tpo_offline_tiny_arith.yaml).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from rlft.algorithms.base import AlgorithmSpec, PolicyModel, RowContext, StepCounts
from rlft.data.collate import encode_prompt, pad_rows
from rlft.data.jsonl import RankedList
from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs
from rlft.schema import Section


class TPOOfflineConfig(Section):
    name: Literal["tpo_offline"] = "tpo_offline"
    path: str = Field(description="Ranked-lists JSONL, rows {'prompt', 'responses': [...], 'scores': [...]}.")
    list_size: int = Field(
        5, ge=2, description="Responses per list (shorter lists are padded, longer ones are an error); "
        "train.batch_size and train.micro_batch_size must be multiples of it."
    )
    beta: float = Field(
        0.5, gt=0.0, description="beta of the implicit reward beta * log(pi_theta / pi_ref) (0.5: the TPO release)."
    )
    lambda_weight: Literal["delta-ndcg", "none"] = Field(
        "delta-ndcg", description="Pair weights: delta-ndcg (|change of NDCG| on swapping the pair) or none (1)."
    )
    label_mode: Literal["rank", "minmax", "score"] = Field(
        "rank", description="Score -> label psi: rank (number of responses scored lower), minmax (scaled "
        "to [0, label_max] within the list), score (the score itself: small non-negative grades)."
    )
    label_max: float = Field(5.0, gt=0.0, description="Top label of label_mode=minmax.")
    gain: Literal["exponential", "linear"] = Field("exponential", description="Gain of a label: 2^psi - 1 or psi.")
    step_weight: Literal["1-cos", "1+cos", "none"] = Field(
        "1-cos", description="Adaptive step reward: weight of a step from its hidden-state cosine to the anchor's "
        "step; 1-cos (steps unlike the best response count more), 1+cos (the released code), none (equal weights)."
    )
    step_aggregation: Literal["sum", "mean"] = Field(
        "sum", description="sum: weighted sum of step log-ratios (= sequence log-ratio at equal weights, as DPO); "
        "mean: weighted mean of per-step token means (the released code)."
    )
    step_delimiter: str = Field("\n", min_length=1, description="Text that ends a reasoning step.")
    nll_coef: float = Field(
        0.0, ge=0.0, description="Weight of an NLL term on each list's best-scored response(s) (token mean; "
        "not part of TPO, as in RPO; 0: the ranking loss alone)."
    )


# ---- labels, gains and lambda weights (no gradient) ----------------------------------------------


def score_labels(scores: torch.Tensor, valid: torch.Tensor, mode: str, label_max: float = 5.0) -> torch.Tensor:
    """Graded labels psi [L, N] of the scores [L, N] of each list (0 on padding rows)."""
    if mode == "rank":
        lower = (scores.unsqueeze(-2) < scores.unsqueeze(-1)) & valid.unsqueeze(-2)  # [L, i, j]: v_j < v_i
        labels = lower.sum(-1).to(scores.dtype)
    elif mode == "minmax":
        low = torch.where(valid, scores, math.inf).amin(-1, keepdim=True)
        high = torch.where(valid, scores, -math.inf).amax(-1, keepdim=True)
        labels = label_max * (scores - low) / (high - low).clamp(min=1e-12)
    else:
        labels = scores
    return torch.where(valid, labels, 0.0)


def gains(labels: torch.Tensor, kind: str) -> torch.Tensor:
    return torch.exp2(labels) - 1.0 if kind == "exponential" else labels


def discounts(rewards: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """d_i = 1 / log2(1 + position of i) in the ranking by reward [L, N], ties broken worse-label-first;
    responses tied in both reward and label share the mean discount of their positions."""
    r_i, r_j = rewards.unsqueeze(-1), rewards.unsqueeze(-2)  # [L, N, 1], [L, 1, N]
    p_i, p_j = labels.unsqueeze(-1), labels.unsqueeze(-2)
    others = valid.unsqueeze(-2)
    ahead = (((r_j > r_i) | ((r_j == r_i) & (p_j < p_i))) & others).sum(-1)  # [L, N] placed before i
    tied = ((r_j == r_i) & (p_j == p_i) & others).sum(-1).clamp(min=1)  # [L, N] including i
    n = rewards.shape[-1]
    positions = torch.arange(1, n + 1, dtype=rewards.dtype, device=rewards.device)
    cumulative = F.pad(torch.cumsum(1.0 / torch.log2(1.0 + positions), 0), (1, 0))  # [N + 1], C[0] = 0
    d = (cumulative[ahead + tied] - cumulative[ahead]) / tied
    return torch.where(valid, d, 0.0)


def ideal_dcg(gain: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """DCG [L] of each list sorted by gain (padding rows last, contributing 0)."""
    ordered = torch.sort(torch.where(valid, gain, -math.inf), dim=-1, descending=True).values
    n = gain.shape[-1]
    positions = torch.arange(1, n + 1, dtype=gain.dtype, device=gain.device)
    return torch.where(torch.isinf(ordered), 0.0, ordered / torch.log2(1.0 + positions)).sum(-1)


def delta_ndcg(rewards: torch.Tensor, labels: torch.Tensor, gain: torch.Tensor, valid: torch.Tensor):
    """(Delta [L, N, N], NDCG of the current ranking [L], IDCG [L]) from detached rewards [L, N]."""
    d = discounts(rewards, labels, valid)
    idcg = ideal_dcg(gain, valid)
    norm = torch.where(idcg > 0, idcg, 1.0).unsqueeze(-1).unsqueeze(-1)
    delta = (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * (d.unsqueeze(-1) - d.unsqueeze(-2)).abs() / norm
    return delta, (gain * d).sum(-1) / norm[..., 0, 0], idcg


# ---- the ranking loss ------------------------------------------------------------------------------


def ranking_loss(rewards: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, cfg: TPOOfflineConfig):
    """Per-list loss [L] = sum_{v_i > v_j} Delta_ij * -log sigmoid(r_i - r_j), and detached statistics.

    rewards [L, N] (with grad), scores [L, N], valid [L, N] (False on padding rows).
    """
    better = (scores.unsqueeze(-1) > scores.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)  # [L, i, j]
    labels = score_labels(scores, valid, cfg.label_mode, cfg.label_max)
    gain = gains(labels, cfg.gain)
    delta, ndcg, idcg = delta_ndcg(rewards.detach(), labels, gain, valid)
    if cfg.lambda_weight == "none":
        delta = torch.ones_like(delta)
    margin = rewards.unsqueeze(-1) - rewards.unsqueeze(-2)  # [L, i, j] = r_i - r_j
    pair_loss = F.softplus(-margin)  # -log sigmoid(margin), stable
    weights = better.to(rewards.dtype) * delta
    stats = {"pairs": better.sum(), "correct_pairs": (better & (margin.detach() > 0)).sum(),
             "margin_sum": (margin.detach() * better).sum(), "ndcg_sum": (ndcg * (idcg > 0)).sum(),
             "graded_lists": (idcg > 0).sum()}
    return (weights * pair_loss).sum((-1, -2)), stats


# ---- adaptive step reward ------------------------------------------------------------------------


def step_one_hot(step_ids: torch.Tensor, num_steps: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] step index per token (-1: none) -> [B, T, K] membership."""
    return (step_ids.unsqueeze(-1) == torch.arange(num_steps, device=step_ids.device)).to(dtype)


def step_weights(states: torch.Tensor, present: torch.Tensor, anchor: torch.Tensor, rule: str) -> torch.Tensor:
    """ASR weights w [L, N, K], mean 1 over each response's steps (0 on absent steps).

    states [L, N, K, H]: mean hidden state of each step (detached); present [L, N, K] bool;
    anchor [L, N] bool: the best-scored responses of each list.
    """
    present_f = present.to(states.dtype)
    count = present.sum(-1, keepdim=True)  # [L, N, 1]
    if rule == "none":
        return present_f
    k = torch.arange(states.shape[-2], device=states.device)
    aligned = torch.minimum(k, (count - 1).clamp(min=0))  # [L, N, K]: this response's step used at index k
    aligned_states = states.gather(-2, aligned.unsqueeze(-1).expand_as(states))
    a = anchor.to(states.dtype).unsqueeze(-1).unsqueeze(-1)  # [L, N, 1, 1]
    anchor_states = (aligned_states * a).sum(1) / a.sum(1).clamp(min=1.0)  # [L, K, H]
    cos = F.cosine_similarity(states, anchor_states.unsqueeze(1), dim=-1)  # [L, N, K]
    omega = (1.0 - cos).clamp(min=0.0) if rule == "1-cos" else 1.0 + cos
    omega = omega * present_f
    total = omega.sum(-1, keepdim=True)
    uniform = anchor.unsqueeze(-1) | (total <= 1e-6 * count)
    return torch.where(uniform, present_f, count * omega / total.clamp(min=1e-12))


def implicit_rewards(step_logratio: torch.Tensor, step_tokens: torch.Tensor, weights: torch.Tensor,
                     beta: float, aggregation: str) -> torch.Tensor:
    """r [..] from per-step log-ratio sums S, token counts n and weights w (all [.., K])."""
    if aggregation == "sum":
        return beta * (weights * step_logratio).sum(-1)
    means = step_logratio / step_tokens.clamp(min=1.0)
    return beta * (weights * means).sum(-1) / weights.sum(-1).clamp(min=1e-12)


def best_responses(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[L, N] bool: the responses with the list's top score (the ASR anchor; the NLL targets)."""
    return valid & (scores == torch.where(valid, scores, -math.inf).amax(-1, keepdim=True))


def list_rewards(log_ratio: torch.Tensor, step_ids: torch.Tensor, hidden: torch.Tensor | None,
                 scores: torch.Tensor, valid: torch.Tensor, cfg: TPOOfflineConfig) -> torch.Tensor:
    """Rewards [L, N] of the micro-batch's lists from token log-ratios [B, T] (B = L * N)."""
    n = cfg.list_size
    lists = log_ratio.shape[0] // n
    num_steps = max(int(step_ids.max().item()) + 1, 1)
    member = step_one_hot(step_ids, num_steps, log_ratio.dtype)  # [B, T, K]
    step_logratio = torch.einsum("bt,btk->bk", log_ratio, member).view(lists, n, num_steps)
    step_tokens = member.sum(1).view(lists, n, num_steps)
    present = step_tokens > 0
    if cfg.step_weight == "none":
        weights = present.to(log_ratio.dtype)
    else:
        sums = torch.einsum("bth,btk->bkh", hidden.detach().to(log_ratio.dtype), member)
        states = (sums / member.sum(1).clamp(min=1.0).unsqueeze(-1)).view(lists, n, num_steps, -1)
        weights = step_weights(states, present, best_responses(scores, valid), cfg.step_weight)
    return implicit_rewards(step_logratio, step_tokens, weights, cfg.beta, cfg.step_aggregation)


# ---- the learner contract ------------------------------------------------------------------------

METRIC_KEYS = ("pairs", "correct_pairs", "margin_sum", "ndcg_sum", "graded_lists", "lists", "best_nll_sum")


def best_response_nll(logprobs: torch.Tensor, mask: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Per-list [L] mean over the best responses (best [L, N]) of their token-mean NLL (logprobs [B, T])."""
    per_row = -(logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # [B]
    weights = best.to(per_row.dtype)
    return (per_row.view(best.shape) * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)


def _lists_of(batch: dict[str, torch.Tensor], n: int) -> int:
    """Number of whole lists in a micro-batch (rows of one list are contiguous)."""
    ids = batch["list_ids"]
    if ids.shape[0] % n or not torch.equal(ids.view(-1, n), ids.view(-1, n)[:, :1].expand(-1, n)):
        raise ValueError(f"a micro-batch must hold whole lists of {n} rows; got list ids {ids.tolist()}")
    return ids.shape[0] // n


def micro_batch_loss(model: PolicyModel, batch: dict[str, torch.Tensor], cfg: TPOOfflineConfig,
                     counts: StepCounts) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of this micro-batch's list losses / the number of lists in the whole step."""
    lists = _lists_of(batch, cfg.list_size)
    if cfg.step_weight == "none":
        logits, hidden = model.logits(batch), None
    else:
        logits, hidden = model.logits_and_hidden_states(batch)
        hidden = hidden[:, 1:]  # aligned with the shifted positions: the state after reading each target token
    logprobs, mask = token_logprobs(logits, batch["labels"])  # [B, T-1], prompt and padding masked
    with torch.no_grad():
        ref_logprobs, _ = token_logprobs(model.reference_logits(batch), batch["labels"])
    log_ratio = (logprobs - ref_logprobs) * mask  # [B, T-1]
    scores = batch["scores"].to(log_ratio.dtype).view(lists, cfg.list_size)
    valid = batch["valid"].bool().view(lists, cfg.list_size)
    rewards = list_rewards(log_ratio, batch["step_ids"], hidden, scores, valid, cfg)  # [L, N]
    per_list, stats = ranking_loss(rewards, scores, valid, cfg)
    nll = best_response_nll(logprobs, mask, best_responses(scores, valid))  # [L]
    stats.update(lists=torch.tensor(lists, device=nll.device), best_nll_sum=nll.detach().sum())
    if cfg.nll_coef > 0:
        per_list = per_list + cfg.nll_coef * nll
    step_lists = max(counts.num_sequences / cfg.list_size, 1.0)  # rows per list are fixed (padded)
    loss = per_list.sum() / step_lists
    metrics = dict(zip(METRIC_KEYS, torch.stack([stats[k].to(torch.float64) for k in METRIC_KEYS]).tolist()))
    return loss, metrics


def log_metrics(sums: dict[str, float], steps: int) -> dict[str, float]:
    pairs = max(sums["pairs"], 1.0)
    return {"train/pair_accuracy": sums["correct_pairs"] / pairs, "train/reward_margin": sums["margin_sum"] / pairs,
            "train/ndcg": sums["ndcg_sum"] / max(sums["graded_lists"], 1.0),
            "train/best_nll": sums["best_nll_sum"] / max(sums["lists"], 1.0)}


# ---- rows: one per response, a list's rows contiguous ---------------------------------------------


def step_of_tokens(text: str, offsets: list[tuple[int, int]], delimiter: str) -> list[int]:
    """Step index of each token (by its first character); a delimiter belongs to the step it ends."""
    ends, start = [], text.find(delimiter)
    while start != -1:
        ends.append(start + len(delimiter))
        start = text.find(delimiter, start + len(delimiter))
    return [bisect_right(ends, first) for first, _ in offsets]


def response_row(tokenizer, prompt_ids: list[int], response: str, score: float, list_id: int,
                 max_length: int, delimiter: str) -> dict[str, Any]:
    """prompt + response + EOS (the response cut to max_length, never the prompt), step ids on shifted positions."""
    encoded = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    if "offset_mapping" not in encoded:
        raise ValueError("tpo needs a fast tokenizer (character offsets) to find step boundaries")
    steps = step_of_tokens(response, encoded["offset_mapping"], delimiter)
    ids = encoded["input_ids"] + [tokenizer.eos_token_id]
    steps = steps + [steps[-1] if steps else 0]
    room = max_length - len(prompt_ids)
    ids, steps = ids[:room], steps[:room]
    input_ids = list(prompt_ids) + ids  # a new list per row: responses never share the prompt's list
    step_ids = [-1] * (len(input_ids) - 1)
    for k, step in enumerate(steps):
        step_ids[len(prompt_ids) + k - 1] = step  # position t predicts token t + 1
    return {"input_ids": input_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + ids, "step_ids": step_ids,
            "score": float(score), "valid": 1.0, "list_id": list_id}


def filler_row(prompt_ids: list[int], list_id: int) -> dict[str, Any]:
    """A loss-free row that pads a short list to list_size."""
    return {"input_ids": list(prompt_ids), "labels": [IGNORE_INDEX] * len(prompt_ids),
            "step_ids": [-1] * (len(prompt_ids) - 1), "score": 0.0, "valid": 0.0, "list_id": list_id}


def build_rows(lists: list[RankedList], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    cfg = ctx.algorithm
    rows, cut = [], 0
    for list_id, item in enumerate(lists):
        prompt_ids = encode_prompt(ctx.tokenizer, item.prompt, ctx.chat)
        if len(prompt_ids) >= ctx.max_length:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit train.max_length={ctx.max_length}")
        for response, score in zip(item.responses, item.scores):
            row = response_row(ctx.tokenizer, prompt_ids, response, score, list_id, ctx.max_length, cfg.step_delimiter)
            cut += row["labels"][-1] != ctx.tokenizer.eos_token_id
            rows.append(row)
        rows += [filler_row(prompt_ids, list_id) for _ in range(cfg.list_size - len(item.responses))]
    return rows, {"data/cut_responses": float(cut)}


def pad_list_rows(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    batch = pad_rows(rows, pad_id)
    width = batch["input_ids"].shape[1] - 1
    batch["step_ids"] = torch.tensor([r["step_ids"] + [-1] * (width - len(r["step_ids"])) for r in rows])
    batch["scores"] = torch.tensor([r["score"] for r in rows], dtype=torch.float64)
    batch["valid"] = torch.tensor([r["valid"] for r in rows], dtype=torch.float32)
    batch["list_ids"] = torch.tensor([r["list_id"] for r in rows])
    return batch


# ---- config checks and the spec ------------------------------------------------------------------


def validate(run_cfg) -> None:
    """Batch sizes fit whole lists; every row of the lists file is well formed (errors name file:line)."""
    from rlft.sources.lists import read_lists

    cfg, train = run_cfg.algorithm, run_cfg.train
    for key in ("batch_size", "micro_batch_size"):
        if getattr(train, key) % cfg.list_size:
            raise ValueError(f"train.{key}={getattr(train, key)} is not a multiple of algorithm.list_size="
                             f"{cfg.list_size}: a list's responses must stay in one micro-batch")
    read_lists(cfg.path, cfg.list_size)


def list_size(run_cfg) -> int:
    return run_cfg.algorithm.list_size


def always(run_cfg) -> bool:
    return True


SPEC = AlgorithmSpec(
    name="tpo_offline",
    config_cls=TPOOfflineConfig,
    source="lists",
    micro_batch_loss=micro_batch_loss,
    build_rows=build_rows,
    pad=pad_list_rows,
    samples_per_prompt=list_size,
    needs_reference=always,
    validate=validate,
    log_metrics=log_metrics,
)
