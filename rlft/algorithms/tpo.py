"""Tree preference optimization (TPO; Liao et al., arXiv 2410.12854): two registered algorithms
(docs/algorithms.md#tpo).

  tpo          online: the "trees" source (rlft.sources.trees) has the generators grow a tree per
               prompt (a root trace, continuations of its step prefixes), the reward roles score
               the leaves, and each tree's leaves are one ranked list (`tree_rows`).
  tpo_offline  ranked lists read from a JSONL file (`algorithm.path`) by the "lists" source.

Not TRL's `TPOTrainer`, which is *triple* preference optimization, a different method.

A prompt x comes with a list of N responses y_1..y_N and scores v_1..v_N (higher is better). The
implicit reward of a response is beta times its log-ratio to the reference policy, and the
loss ranks the list by it, pairwise-decomposed and lambda-weighted (LiPO-lambda form):

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

Adaptive step reward (`step_weight`): w_ik from the cosine similarity between the mean
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
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from rlft.algorithms.base import AlgorithmSpec, PolicyModel, RowContext, StepCounts, rollout_passes
from rlft.data.collate import encode_prompt, pad_rows
from rlft.data.jsonl import RankedList
from rlft.data.steps import segment_steps, step_of_tokens
from rlft.types import Rollout
from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs
from rlft.ops.ranking import delta_ndcg, gains, score_labels
from rlft.schema import Section


class TPOLossConfig(Section):
    """The ranking loss and step rewards, shared by the offline and the online algorithm."""

    name: str = Field(..., description="Algorithm name.")
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


class TPOOfflineConfig(TPOLossConfig):
    name: Literal["tpo_offline"] = "tpo_offline"
    path: str = Field(description="Ranked-lists JSONL, rows {'prompt', 'responses': [...], 'scores': [...]}.")
    list_size: int = Field(
        5, ge=2, description="Responses per list (shorter lists are padded, longer ones are an error); "
        "train.batch_size and train.micro_batch_size must be multiples of it."
    )


class TPOConfig(TPOLossConfig):
    name: Literal["tpo"] = "tpo"
    branches: list[int] = Field(
        [3, 2, 2], min_length=1, description="Tree shape: branches[d] continuations are sampled from the prefix of "
        "the root's first d steps (d = 0: the prompt alone). A tree has 1 + sum(branches) leaves, one list."
    )

    @field_validator("branches")
    @classmethod
    def _positive(cls, branches: list[int]) -> list[int]:
        if any(b < 0 for b in branches) or sum(branches) < 1:
            raise ValueError(f"branches={branches}: counts must be >= 0 with at least one continuation")
        return branches

    @property
    def list_size(self) -> int:
        return 1 + sum(self.branches)


# ---- the ranking loss ------------------------------------------------------------------------------


def ranking_loss(rewards: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, cfg: TPOLossConfig):
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
                 scores: torch.Tensor, valid: torch.Tensor, cfg: TPOLossConfig) -> torch.Tensor:
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


def micro_batch_loss(model: PolicyModel, batch: dict[str, torch.Tensor], cfg: TPOLossConfig,
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


def token_row(prompt_ids: list[int], ids: list[int], steps: list[int], score: float, list_id: int,
              max_length: int) -> dict[str, Any]:
    """prompt + response tokens (cut to max_length, never the prompt), step ids on shifted positions."""
    room = max_length - len(prompt_ids)
    ids, steps = ids[:room], steps[:room]
    input_ids = list(prompt_ids) + list(ids)  # a new list per row: responses never share the prompt's list
    step_ids = [-1] * (len(input_ids) - 1)
    for k, step in enumerate(steps):
        step_ids[len(prompt_ids) + k - 1] = step  # position t predicts token t + 1
    return {"input_ids": input_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + list(ids), "step_ids": step_ids,
            "score": float(score), "valid": 1.0, "list_id": list_id}


def response_row(tokenizer, prompt_ids: list[int], response: str, score: float, list_id: int,
                 max_length: int, delimiter: str) -> dict[str, Any]:
    """prompt + response text + EOS as a row; EOS belongs to the last step."""
    encoded = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    if "offset_mapping" not in encoded:
        raise ValueError("tpo needs a fast tokenizer (character offsets) to find step boundaries")
    steps = step_of_tokens(response, encoded["offset_mapping"], delimiter)
    ids = encoded["input_ids"] + [tokenizer.eos_token_id]
    return token_row(prompt_ids, ids, steps + [steps[-1] if steps else 0], score, list_id, max_length)


def filler_row(prompt_ids: list[int], list_id: int) -> dict[str, Any]:
    """A loss-free row that pads a short list to list_size."""
    return {"input_ids": list(prompt_ids), "labels": [IGNORE_INDEX] * len(prompt_ids),
            "step_ids": [-1] * (len(prompt_ids) - 1), "score": 0.0, "valid": 0.0, "list_id": list_id}


def build_rows(lists: list[RankedList], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    """Offline: each ranked list -> list_size rows (its responses, then fillers)."""
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


def tree_rows(leaves: list[Rollout], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    """Online: the scored leaves of each tree (one group id) -> one list of list_size rows."""
    trees: dict[int, list[Rollout]] = {}
    for leaf in leaves:
        trees.setdefault(leaf.group, []).append(leaf)
    rows = []
    for list_id, members in enumerate(trees.values()):
        for leaf in members:
            rows.append(token_row(leaf.prompt_ids, leaf.completion_ids, segment_steps(leaf.segments, len(leaf.completion_ids)), leaf.reward, list_id,
                                  ctx.max_length))
        rows += [filler_row(members[0].prompt_ids, list_id) for _ in range(ctx.algorithm.list_size - len(members))]
    return rows, {}


def pad_list_rows(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    batch = pad_rows(rows, pad_id)
    width = batch["input_ids"].shape[1] - 1
    batch["step_ids"] = torch.tensor([r["step_ids"] + [-1] * (width - len(r["step_ids"])) for r in rows])
    batch["scores"] = torch.tensor([r["score"] for r in rows], dtype=torch.float64)
    batch["valid"] = torch.tensor([r["valid"] for r in rows], dtype=torch.float32)
    batch["list_ids"] = torch.tensor([r["list_id"] for r in rows])
    return batch


# ---- config checks and the spec ------------------------------------------------------------------


def _check_whole_lists(run_cfg, what: str) -> None:
    cfg, train = run_cfg.algorithm, run_cfg.train
    for key in ("batch_size", "micro_batch_size"):
        if getattr(train, key) % cfg.list_size:
            raise ValueError(f"train.{key}={getattr(train, key)} is not a multiple of {what}={cfg.list_size}: "
                             "a list's responses must stay in one micro-batch")


def validate_offline(run_cfg) -> None:
    """Batch sizes fit whole lists; every row of the lists file is well formed (errors name file:line)."""
    from rlft.sources.lists import read_lists

    _check_whole_lists(run_cfg, "algorithm.list_size")
    read_lists(run_cfg.algorithm.path, run_cfg.algorithm.list_size)


def validate_online(run_cfg) -> None:
    _check_whole_lists(run_cfg, "the tree size 1 + sum(algorithm.branches)")


def list_size(run_cfg) -> int:
    return run_cfg.algorithm.list_size


def always(run_cfg) -> bool:
    return True


SPEC = AlgorithmSpec(
    summary="tree preference optimization, online trees from the generators "
            "(not TRL's TPOTrainer: that is triple preference optimization)",
    name="tpo", config_cls=TPOConfig, source="trees", roles=("generator", "reward"),
    micro_batch_loss=micro_batch_loss, build_rows=tree_rows, pad=pad_list_rows, passes=rollout_passes,
    samples_per_prompt=list_size, needs_reference=always, validate=validate_online, log_metrics=log_metrics,
)

OFFLINE_SPEC = AlgorithmSpec(
    summary="tree preference optimization from a ranked-lists JSONL file",
    name="tpo_offline", config_cls=TPOOfflineConfig, source="lists",
    micro_batch_loss=micro_batch_loss, build_rows=build_rows, pad=pad_list_rows,
    samples_per_prompt=list_size, needs_reference=always, validate=validate_offline, log_metrics=log_metrics,
)
