"""Rollouts a teacher has read: the `rollouts` source, then the teacher roles' log-probs of every
completion token (on-policy distillation, rlft.algorithms.distill).

Each rollout gets `info["teacher_logprobs"]`, one per completion token the training row keeps
(rlft.roles.teacher), and the batch's metrics gain the teacher's time and the reverse KL the
student's samples show, per token: the mean of log pi_student - log pi_teacher over the sampled
tokens (its expectation over the student's own samples is KL(student || teacher) per token).
"""

from __future__ import annotations

import time

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
    """Mean over the scored tokens of log pi_student - log pi_teacher (sampling log-probs of the student)."""
    total = tokens = 0.0
    for r in rollouts:
        teacher = r.info[TEACHER_LOGPROBS]
        total += sum(s - t for s, t in zip(r.logprobs, teacher))
        tokens += len(teacher)
    return total / max(tokens, 1.0)


class TeacherRolloutSource(RolloutSource):
    """The rollouts source, each batch read by the teacher roles after the reward roles scored it."""

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list[Rollout], dict[str, float]]:
        rollouts, metrics = super().next_batch(iteration, policy_version)
        started = time.time()
        teacher_logprobs(self.ctx.roles["teacher"], rollouts)
        metrics.update({"perf/time_teacher": time.time() - started,
                        "rollout/reverse_kl": reverse_kl_per_token(rollouts)})
        return rollouts, metrics
