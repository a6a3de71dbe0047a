"""Reward model (docs/algorithms.md#reward-models): Bradley-Terry training of a scalar sequence score.

The learners load the base model under a scalar head (`model_head="score"`: for a causal LM,
AutoModelForSequenceClassification with num_labels=1, read at the last non-pad token) and train it on
the (prompt, chosen, rejected) pairs of a JSONL file, the file offline DPO reads. With r(x, y) the
score of prompt x + response y (+ EOS), the Bradley-Terry model says P(y_w > y_l | x) = sigma(r_w - r_l);
its negative log-likelihood per pair is

    L = -log sigma(r_w - r_l) = log(1 + exp(-(r_w - r_l)))

(Bradley & Terry 1952; the reward model of InstructGPT, arXiv 2203.02155 eq. 1), averaged over the
pairs of the whole optimisation step. A tied pair (r_w = r_l) costs log 2; the gradient
dL/dr_w = -sigma(-(r_w - r_l)) = -dL/dr_l shrinks as the margin grows. Only differences of scores are
trained: a constant added to every score changes nothing.

Layout as DPO's (rlft.algorithms.dpo): rows chosen, rejected, chosen, rejected, ...; an even
train.micro_batch_size keeps a pair in one micro-batch, and the loss divides by the step-global
number of pairs (num_sequences / 2), so micro-batching and data-parallel ranks do not change it.

Held-out pairs (`eval_path`, or the last `eval_pairs` rows of `path`, never trained on) are scored by
learner rank 0 at each evaluation (the "reward_pairs" source): eval/pair_accuracy, the share of pairs
with r_w > r_l (a tie counts as wrong), and eval/reward_margin, the mean r_w - r_l. The final
checkpoint is an HF sequence-classification folder: the `reward_model` reward component
(rlft.rewards.reward_model) scores rollouts with it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from rlft.algorithms.base import AlgorithmSpec, PolicyModel, StepCounts, single_pass
from rlft.algorithms.dpo import check_even_rows, count_pair_rows, file_pair_rows, pad_pair_rows
from rlft.schema import Section
from rlft.sources.pairs import split_pairs


class RewardModelConfig(Section):
    name: Literal["reward_model"] = Field("reward_model", description="Algorithm name.")
    path: str = Field(..., description="JSONL file of {'prompt', 'chosen', 'rejected'} rows to train on "
                                       "(the file offline DPO reads).")
    eval_path: str | None = Field(
        None, description="JSONL file of held-out pairs, scored at each evaluation (eval/pair_accuracy).")
    eval_pairs: int = Field(
        0, ge=0, description="Without eval_path: hold out the last eval_pairs rows of `path` (not trained on) "
                             "and score them at each evaluation; 0: no held-out pairs.")


# ---- the loss: pure tensor functions --------------------------------------------------------------


def bradley_terry_losses(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigma(r_w - r_l) per pair [P] (softplus(-(r_w - r_l)), stable for any margin)."""
    return F.softplus(rejected - chosen)


def sequence_scores(model: PolicyModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The score head's scalar per row [B] (with grad)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]


METRIC_KEYS = ("pairs", "correct_pairs", "margin_sum", "chosen_sum", "rejected_sum")


@torch.no_grad()
def pair_metric_sums(chosen: torch.Tensor, rejected: torch.Tensor, weight: torch.Tensor) -> dict[str, float]:
    """Sums over real pairs (weight 1): count, pairs ranked right (r_w > r_l strictly), margins, scores."""
    margin = chosen - rejected
    sums = torch.stack([weight.sum(), (weight * (margin > 0)).sum(), (weight * margin).sum(),
                        (weight * chosen).sum(), (weight * rejected).sum()])
    return dict(zip(METRIC_KEYS, sums.tolist()))


def micro_batch_loss(model: PolicyModel, batch: dict[str, torch.Tensor], cfg: RewardModelConfig,
                     counts: StepCounts) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of this micro-batch's pair losses / the step's number of pairs (num_sequences / 2)."""
    scores = sequence_scores(model, batch).float()  # [B], rows chosen, rejected, ...
    chosen, rejected = scores[0::2], scores[1::2]
    weight = batch["weight"][0::2].to(scores.device, scores.dtype)  # [P]
    loss = (weight * bradley_terry_losses(chosen, rejected)).sum() / max(counts.num_sequences / 2.0, 1.0)
    return loss, pair_metric_sums(chosen.detach(), rejected.detach(), weight)


def log_metrics(sums: dict[str, float], steps: int) -> dict[str, float]:
    pairs = max(sums["pairs"], 1.0)
    return {"train/pair_accuracy": sums["correct_pairs"] / pairs, "train/reward_margin": sums["margin_sum"] / pairs,
            "train/reward_chosen": sums["chosen_sum"] / pairs, "train/reward_rejected": sums["rejected_sum"] / pairs,
            "train/pairs": sums["pairs"] / steps}


# ---- config checks and the spec ---------------------------------------------------------------------


def validate(run_cfg) -> None:
    """Even rows; the pairs files well-formed; something held out when the run evaluates."""
    check_even_rows(run_cfg)
    _, held_out = split_pairs(run_cfg.algorithm)
    if run_cfg.train.eval_every and not held_out:
        raise ValueError(f"train.eval_every={run_cfg.train.eval_every}: a reward model is evaluated on held-out "
                         "pairs; set algorithm.eval_pairs (the last rows of algorithm.path) or algorithm.eval_path, "
                         "or train.eval_every=0")


SPEC = AlgorithmSpec(
    summary="Reward model: Bradley-Terry loss of a scalar sequence-score head on preference pairs (JSONL)",
    name="reward_model", config_cls=RewardModelConfig, source="reward_pairs", micro_batch_loss=micro_batch_loss,
    build_rows=file_pair_rows, pad=pad_pair_rows, count_tokens=count_pair_rows, passes=single_pass,
    validate=validate, log_metrics=log_metrics, model_head="score",
)
