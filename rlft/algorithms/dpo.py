"""DPO (docs/algorithms.md#dpo): preference optimisation on (prompt, chosen, rejected) pairs, offline and online.

Sequence log-probs are sums over the response tokens (not means). For chosen y_w and rejected y_l,

    h = [log pi(y_w|x) - log pi(y_l|x)] - [log pi_ref(y_w|x) - log pi_ref(y_l|x)]

    sigmoid   (DPO, arXiv 2305.18290 eq. 7)    L = -log sigma(beta h)
      + label_smoothing eps (conservative DPO) L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
    ipo       (IPO, arXiv 2310.12036)          L = (h - 1 / (2 beta))^2        (the original form)
    ipo_length_normalised (TRL's loss_type="ipo"): the same square, with each of the four
              log-probs first divided by its response length (a per-token mean log-ratio)
    reference_free                             pi_ref terms := 0, so no reference model is kept
    + nll_coef alpha (iterative RPO, arXiv 2404.19733; TRL's rpo_alpha)
                                               + alpha * (-log pi(y_w|x) / |y_w|)

averaged over the pairs of the whole optimisation step. The NLL term keeps the likelihood of the
chosen responses from falling along with the rejected ones: on pairs that share most of their
tokens, plain DPO tends to lower both, and greedy decoding degrades (configs/dpo_offline_tiny_arith.yaml). Gradient of the sigmoid loss:
dL/dh = -beta sigma(-beta h), so a pair's weight sigma(-beta h) in (0, 1) shrinks as its margin grows.
The implicit rewards r = beta (log pi - log pi_ref) are logged detached (chosen, rejected, margin,
and the accuracy: the share of pairs with r_w > r_l), on the log-probs the loss uses.

Layout. Pairs never straddle micro-batches: rows are chosen, rejected, chosen, rejected, ... and
train.micro_batch_size is even (train.batch_size counts rows: 2 per pair). Every row carries a
`weight`: 1 for a real pair, 0 for a loss-free filler pair that keeps the layout fixed when an
online group has no preference. `count_pair_rows` makes StepCounts.num_sequences the step's number
of real rows, so the loss divides by the step-global number of pairs, num_sequences / 2, and
micro-batching or data-parallel ranks do not change it.

Two registered algorithms share the loss:
  dpo_offline  pairs read from a JSONL file (`algorithm.path`) by the "pairs" source; learners only.
  dpo          online: the generators sample group_size responses per prompt, the reward roles score
               them, and each group becomes pairs (best vs worst, or correct x incorrect, capped).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from rlft.algorithms.base import (
    AlgorithmSpec,
    PolicyModel,
    RowContext,
    StepCounts,
    count_label_tokens,
    rollout_passes,
    single_pass,
)
from rlft.data.collate import encode_sft, pad_rows
from rlft.data.jsonl import PreferencePair
from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs
from rlft.schema import Section
from rlft.sources.pairs import read_pairs_file
from rlft.types import Rollout


class DPOLossConfig(Section):
    name: str = Field(..., description="Algorithm name.")
    beta: float = Field(0.1, gt=0.0, description="beta: scale of the implicit reward beta*log(pi/pi_ref).")
    loss_type: Literal["sigmoid", "ipo", "ipo_length_normalised"] = Field(
        "sigmoid", description="sigmoid: DPO (cDPO with label_smoothing); ipo: original IPO on summed log-probs; "
                               "ipo_length_normalised: TRL's IPO on per-token mean log-probs.")
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5,
        description="Conservative DPO: probability eps that a pair's label is flipped (sigmoid only).")
    reference_free: bool = Field(False, description="Drop the reference terms (no reference model is kept).")
    nll_coef: float = Field(
        0.0, ge=0.0, description="Weight alpha of the chosen responses' per-token NLL (RPO; TRL's rpo_alpha).")

    @model_validator(mode="after")
    def _smoothing_is_for_sigmoid(self):
        if self.label_smoothing > 0 and self.loss_type != "sigmoid":
            raise ValueError(f"label_smoothing (conservative DPO) applies to loss_type=sigmoid, not {self.loss_type}")
        return self


class OfflineDPOConfig(DPOLossConfig):
    name: Literal["dpo_offline"] = Field("dpo_offline", description="Algorithm name.")
    path: str = Field(..., description="JSONL file of {'prompt', 'chosen', 'rejected'} rows (the 'pairs' source).")


class DPOConfig(DPOLossConfig):
    name: Literal["dpo"] = Field("dpo", description="Algorithm name.")
    group_size: int = Field(
        8, ge=2, description="Responses sampled per prompt (even: a group fills group_size/2 pair slots).")
    pairing: Literal["best_worst", "correct_incorrect"] = Field(
        "best_worst", description="best_worst: highest vs lowest reward; correct_incorrect: correct x incorrect pairs.")
    max_pairs_per_group: int | None = Field(
        None, ge=1, description="correct_incorrect: at most this many pairs per group (None: group_size/2).")

    @model_validator(mode="after")
    def _cap_is_for_correct_incorrect(self):
        if self.max_pairs_per_group is not None and self.pairing != "correct_incorrect":
            raise ValueError("max_pairs_per_group applies to pairing=correct_incorrect")
        return self


# ---- the loss: pure tensor functions --------------------------------------------------------------


def sequence_logprobs(logprobs: torch.Tensor, mask: torch.Tensor, length_normalised: bool = False) -> torch.Tensor:
    """log pi(y|x) = sum_t log pi(y_t | x, y_<t) per row [B] (or the per-token mean if length_normalised)."""
    total = (logprobs * mask).sum(-1)  # [B]
    return total / mask.sum(-1).clamp(min=1.0) if length_normalised else total


def preference_logits(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                      ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
    """h = (log pi_w - log pi_l) - (log pi_ref_w - log pi_ref_l), per pair [P]."""
    return (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)


def sigmoid_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """-(1 - eps) log sigma(beta h) - eps log sigma(-beta h) per pair (eps = 0: DPO)."""
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """(h - 1/(2 beta))^2 per pair (IPO's regression of the log-ratio gap onto 1/(2 beta))."""
    return (h - 1.0 / (2.0 * beta)) ** 2


def pair_losses(h: torch.Tensor, cfg: DPOLossConfig) -> torch.Tensor:
    if cfg.loss_type == "sigmoid":
        return sigmoid_loss(h, cfg.beta, cfg.label_smoothing)
    return ipo_loss(h, cfg.beta)  # ipo and ipo_length_normalised differ in the log-probs, not here


def chosen_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-log pi(y_w|x) / |y_w| per pair [P], from the token log-probs [B, T] of rows chosen, rejected, ..."""
    return -sequence_logprobs(logprobs[0::2], mask[0::2], length_normalised=True)


METRIC_KEYS = ("pairs", "reward_chosen_sum", "reward_rejected_sum", "reward_correct_pairs",
               "logp_chosen_sum", "logp_rejected_sum", "nll_chosen_sum")


@torch.no_grad()
def _metrics(policy, ref, nll, weight, beta: float) -> dict[str, float]:
    rewards = beta * (policy - ref)  # [B] implicit rewards, detached
    chosen, rejected = rewards[0::2], rewards[1::2]
    sums = torch.stack([weight.sum(), (weight * chosen).sum(), (weight * rejected).sum(),
                        (weight * (chosen > rejected)).sum(), (weight * policy[0::2]).sum(),
                        (weight * policy[1::2]).sum(), (weight * nll).sum()])
    return dict(zip(METRIC_KEYS, sums.tolist()))


def micro_batch_loss(model: PolicyModel, batch: dict[str, torch.Tensor], cfg: DPOLossConfig,
                     counts: StepCounts) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of this micro-batch's pair losses / the step's number of pairs (num_sequences / 2)."""
    normalised = cfg.loss_type == "ipo_length_normalised"
    logprobs, mask = token_logprobs(model.logits(batch), batch["labels"])  # [B, T-1]
    policy = sequence_logprobs(logprobs, mask, normalised)  # [B], rows chosen, rejected, ...
    if cfg.reference_free:
        ref = torch.zeros_like(policy)
    else:
        with torch.no_grad():
            ref_logprobs, _ = token_logprobs(model.reference_logits(batch), batch["labels"])
        ref = sequence_logprobs(ref_logprobs, mask, normalised)
    weight = batch["weight"][0::2].to(policy.device, policy.dtype)  # [P]: 0 for filler pairs
    h = preference_logits(policy[0::2], policy[1::2], ref[0::2], ref[1::2])  # [P]
    nll = chosen_nll(logprobs, mask)  # [P]
    losses = pair_losses(h, cfg) + cfg.nll_coef * nll  # [P]
    loss = (weight * losses).sum() / max(counts.num_sequences / 2.0, 1.0)
    return loss, _metrics(policy.detach(), ref, nll.detach(), weight, cfg.beta)


def log_metrics(sums: dict[str, float], steps: int) -> dict[str, float]:
    """Means over the real pairs of the summed metrics (filler pairs carry weight 0)."""
    pairs = max(sums["pairs"], 1.0)
    chosen, rejected = sums["reward_chosen_sum"] / pairs, sums["reward_rejected_sum"] / pairs
    return {"train/reward_chosen": chosen, "train/reward_rejected": rejected, "train/reward_margin": chosen - rejected,
            "train/reward_accuracy": sums["reward_correct_pairs"] / pairs,
            "train/logp_chosen": sums["logp_chosen_sum"] / pairs,
            "train/logp_rejected": sums["logp_rejected_sum"] / pairs,
            "train/nll_chosen": sums["nll_chosen_sum"] / pairs, "train/pairs": sums["pairs"] / steps}


# ---- rows: pairs laid out chosen, rejected; padding and counts -------------------------------------


def sequence_row(prompt_ids: list[int], response_ids: list[int], max_length: int) -> dict:
    """Prompt + response (cut to max_length, never the prompt); labels IGNORE_INDEX on the prompt."""
    response_ids = response_ids[: max(0, max_length - len(prompt_ids))]
    return {"input_ids": prompt_ids + response_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
            "weight": 1.0}


def filler_pair(prompt_ids: list[int]) -> list[dict]:
    """Two loss-free rows (no labels, weight 0) in place of a pair."""
    row = {"input_ids": list(prompt_ids), "labels": [IGNORE_INDEX] * len(prompt_ids), "weight": 0.0}
    return [row, dict(row)]


def pad_pair_rows(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    if len(rows) % 2:
        raise ValueError(f"a micro-batch of {len(rows)} rows splits a preference pair; use an even micro_batch_size")
    batch = pad_rows(rows, pad_id)
    batch["weight"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)  # [B]
    return batch


def count_pair_rows(batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(label tokens, rows of real pairs): num_sequences / 2 is then the step's number of pairs."""
    return count_label_tokens(batch)[0], float(batch["weight"].sum().item())


def file_pair_rows(pairs: list[PreferencePair], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    """Offline: each pair -> its chosen and its rejected row (responses end with EOS, as in SFT)."""
    rows = []
    for pair in pairs:
        for response in (pair.chosen, pair.rejected):
            rows.append({**encode_sft(ctx.tokenizer, pair.prompt, response, ctx.max_length, ctx.chat), "weight": 1.0})
    return rows, {}


def best_worst(rewards: list[float]) -> list[tuple[int, int]]:
    """[(highest, lowest)] by reward (first of ties), or [] when every reward is equal."""
    best = max(range(len(rewards)), key=rewards.__getitem__)
    worst = min(range(len(rewards)), key=rewards.__getitem__)
    return [] if rewards[best] == rewards[worst] else [(best, worst)]


def correct_incorrect(correct: list[bool], cap: int) -> list[tuple[int, int]]:
    """Up to `cap` (correct, incorrect) index pairs, taken diagonal by diagonal over the correct x
    incorrect grid, so the responses are used as evenly as the cap allows."""
    good = [i for i, c in enumerate(correct) if c]
    bad = [i for i, c in enumerate(correct) if not c]
    width = max(len(good), len(bad), 1)
    grid = sorted(((a, b) for a in range(len(good)) for b in range(len(bad))),
                  key=lambda p: ((p[1] - p[0]) % width, p[0]))  # diagonal d: b - a = d (mod width)
    return [(good[a], bad[b]) for a, b in grid[:cap]]


def rollout_pair_rows(rollouts: list[Rollout], ctx: RowContext) -> tuple[list[dict], dict[str, float]]:
    """Online: each group of group_size scored rollouts fills group_size/2 pair slots with its
    preference pairs, then loss-free fillers (so the row count, and the layout, stay fixed)."""
    cfg = ctx.algorithm
    slots = cfg.group_size // 2
    groups: dict[int, list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault(r.group, []).append(r)
    rows, pairs, with_pairs = [], 0, 0
    for members in groups.values():
        if cfg.pairing == "best_worst":
            picked = best_worst([r.reward for r in members])
        else:
            picked = correct_incorrect([r.correct for r in members], cfg.max_pairs_per_group or slots)
        for pair in picked:  # (chosen index, rejected index)
            rows += [sequence_row(members[i].prompt_ids, members[i].completion_ids, ctx.max_length) for i in pair]
        for _ in range(len(members) // 2 - len(picked)):
            rows += filler_pair(members[0].prompt_ids)
        pairs, with_pairs = pairs + len(picked), with_pairs + bool(picked)
    return rows, {"rollout/pairs_per_prompt": pairs / len(groups),
                  "rollout/prompts_with_pairs": with_pairs / len(groups)}


# ---- config checks and the two specs ----------------------------------------------------------------


def check_even_rows(run_cfg) -> None:
    train = run_cfg.train
    if train.micro_batch_size % 2 or train.batch_size % 2:
        raise ValueError(f"train.micro_batch_size={train.micro_batch_size} and train.batch_size={train.batch_size} "
                         "must be even: they count rows, and a preference pair is 2 rows that share a micro-batch")


def validate_offline(run_cfg) -> None:
    """Even rows, and every row of the pairs file well-formed (a DataError names its file:line)."""
    check_even_rows(run_cfg)
    read_pairs_file("path", run_cfg.algorithm.path)


def validate_online(run_cfg) -> None:
    check_even_rows(run_cfg)
    cfg, rows = run_cfg.algorithm, run_cfg.train.batch_size * run_cfg.rollout.mini_batches
    if cfg.group_size % 2:
        raise ValueError(f"algorithm.group_size={cfg.group_size} must be even: a group fills group_size/2 pair slots")
    if cfg.max_pairs_per_group is not None and cfg.max_pairs_per_group > cfg.group_size // 2:
        raise ValueError(f"algorithm.max_pairs_per_group={cfg.max_pairs_per_group} exceeds the {cfg.group_size // 2} "
                         f"pair slots of a group (group_size/2)")
    if rows % cfg.group_size:
        raise ValueError(f"train.batch_size x rollout.mini_batches = {rows} rows per iteration is not a multiple "
                         f"of algorithm.group_size={cfg.group_size}")


def needs_reference(run_cfg) -> bool:
    return not run_cfg.algorithm.reference_free


def group_size(run_cfg) -> int:
    return run_cfg.algorithm.group_size


SPEC = AlgorithmSpec(
    summary="DPO online: samples per prompt, scored, paired (best vs worst or correct x wrong); cDPO, IPO, RPO",
    name="dpo", config_cls=DPOConfig, source="rollouts", roles=("generator", "reward"),
    micro_batch_loss=micro_batch_loss, build_rows=rollout_pair_rows, pad=pad_pair_rows, count_tokens=count_pair_rows,
    passes=rollout_passes, samples_per_prompt=group_size,
    needs_reference=needs_reference, validate=validate_online, log_metrics=log_metrics,
)

OFFLINE_SPEC = AlgorithmSpec(
    summary="DPO offline, from a pairs JSONL file (prompt, chosen, rejected)",
    name="dpo_offline", config_cls=OfflineDPOConfig, source="pairs", micro_batch_loss=micro_batch_loss,
    build_rows=file_pair_rows, pad=pad_pair_rows, count_tokens=count_pair_rows, passes=single_pass,
    needs_reference=needs_reference, validate=validate_offline, log_metrics=log_metrics,
)
