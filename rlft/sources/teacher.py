"""Rollouts a teacher has read: the `rollouts` source, then the teacher roles' log-probs of every
completion token (on-policy distillation, rlft.algorithms.distill).

Each rollout gets `info["teacher_logprobs"]`, one per completion token the training row keeps
(rlft.roles.teacher), and the batch's metrics gain the teacher's time and the reverse KL the
student's samples show, per token: the mean of log pi_student - log pi_teacher over the sampled
tokens (its expectation over the student's own samples is KL(student || teacher) per token).
"""

from __future__ import annotations

import time

import torch

from rlft.ops.distillation import reverse_kl_tokens
from rlft.sources.rollouts import RolloutSource, split_evenly
from rlft.types import Rollout

TEACHER_LOGPROBS = "teacher_logprobs"


def teacher_logprobs(teachers, rollouts: list[Rollout]) -> None:
    """Attach the teachers' log-probs to every rollout, the rollouts spread evenly over the teachers."""
    chunks = split_evenly(rollouts, len(teachers))
    for chunk, scored in zip(chunks, teachers.call_each("logprobs", [(c,) for c in chunks])):
        for rollout, logprobs in zip(chunk, scored):
            rollout.info[TEACHER_LOGPROBS] = logprobs


def reverse_kl_per_token(rollouts: list[Rollout]) -> float:
    """Mean over the scored tokens of k_t = log pi_student - log pi_teacher (rlft.ops.distillation; the
    student's sampling log-probs)."""
    width = max([len(r.info[TEACHER_LOGPROBS]) for r in rollouts], default=0)
    student, teacher, mask = (torch.zeros(len(rollouts), width, dtype=torch.float64) for _ in range(3))
    for i, r in enumerate(rollouts):
        n = min(len(r.info[TEACHER_LOGPROBS]), len(r.logprobs))
        student[i, :n] = torch.tensor(r.logprobs[:n], dtype=torch.float64)
        teacher[i, :n] = torch.tensor(r.info[TEACHER_LOGPROBS][:n], dtype=torch.float64)
        mask[i, :n] = 1.0
    return float(reverse_kl_tokens(student, teacher, mask).sum() / mask.sum().clamp(min=1.0))


class TeacherRolloutSource(RolloutSource):
    """The rollouts source, each batch read by the teacher roles after the reward roles scored it."""

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list[Rollout], dict[str, float]]:
        rollouts, metrics = super().next_batch(iteration, policy_version)
        started = time.time()
        teacher_logprobs(self.ctx.roles["teacher"], rollouts)
        metrics.update({"perf/time_teacher": time.time() - started,
                        "rollout/reverse_kl": reverse_kl_per_token(rollouts)})
        return rollouts, metrics
