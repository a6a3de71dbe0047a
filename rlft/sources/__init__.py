"""Data sources: where an algorithm's training items come from (`AlgorithmSpec.source`).

A source is built once per run from a `SourceContext` and hands the controller one batch of
items per iteration (`next_batch`), with the metrics of making it; `state()` / `load_state()`
(JSON) say where it is in its data, for exact resume and for generating a lost batch again.
Because a source knows how its data is made, it also evaluates the held-out examples the same
way (`evaluate`, called by the controller), and says how many tokens it samples after a training
prompt (`sampled_tokens`, which the prompt-length check adds; rlft.data.lengths). Both have
defaults on `Source`: learner rank 0 evaluates, as the model family scores, and one token.
Registered by name:

  dataset   examples of the task's train split, in a seeded epoch order (SFT)
  rollouts  prompts from the train split, sampled by the generator roles and scored by the
            reward roles (policy-gradient algorithms)
  pairs     preference pairs (prompt, chosen, rejected) from the JSONL file `algorithm.path`
  reward_pairs  the same, less held-out pairs that evaluation scores with the score head (reward models)
  lists     ranked lists (prompt, responses, scores) from the JSONL file `algorithm.path`

  trees     preference trees grown by the generators
  sampling  seeds only: the learners sample inside the loss (DRAKES)
  teacher_rollouts  rollouts, then the teacher roles' log-probs of every completion token
            (on-policy distillation)
  episodes  multi-turn retrieval episodes: generators write turns, the environment role answers
            searches, reward roles score (IM-RAG)

How each evaluates: reward_pairs by learner rank 0's scores of its held-out pairs; dataset, pairs
and lists on learner rank 0 (the family's `evaluate_on_learner`:
greedy answers checked by the task, or a diffusion model's held-out NELBO and samples); rollouts,
teacher_rollouts and trees by one greedy answer per example from the generators, scored by the reward roles;
episodes by one greedy episode per example; sampling by diffusion samples from the generators,
scored by the oracles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlft.registry import Registry

SOURCES: Registry = Registry("data source", {
    "dataset": "rlft.sources.dataset:DatasetSource",
    "rollouts": "rlft.sources.rollouts:RolloutSource",
    "pairs": "rlft.sources.pairs:PairSource",
    "reward_pairs": "rlft.sources.pairs:RewardPairSource",
    "lists": "rlft.sources.lists:ListSource",
    "trees": "rlft.sources.trees:TreeSource",
    "sampling": "rlft.sources.sampling:SamplingSource",
    "episodes": "rlft.sources.episodes:EpisodeSource",
    "teacher_rollouts": "rlft.sources.teacher:TeacherRolloutSource",
})


@dataclass
class SourceContext:
    cfg: Any                 # the whole run config
    spec: Any                # the algorithm's AlgorithmSpec
    task: Any
    tokenizer: Any
    chat: bool
    train_examples: list
    roles: dict[str, Any]    # role kind -> RoleGroup ("generator", "reward", ...)

    def check_prompts_fit(self, rows) -> None:
        """DataError naming the first row (its `source`, "<path>:<line>") whose prompt leaves no room
        in train.max_length for a single response token."""
        from rlft.data.collate import encode_prompt
        from rlft.data.jsonl import DataError

        limit = self.cfg.train.max_length
        for row in rows:
            length = len(encode_prompt(self.tokenizer, row.prompt, self.chat))
            if length >= limit:
                raise DataError(f"{row.source}: prompt of {length} tokens + 1 more does not fit "
                                f"train.max_length ({limit})")

    def rows_per_batch(self) -> int:
        """Training rows one source batch must yield: batch_size per optimizer step x mini-batches."""
        mini_batches, _ = self.spec.passes(self.cfg)
        return self.cfg.train.batch_size * mini_batches


class Source:
    """What the controller asks of every source. `next_batch`, `state` and `load_state` are each
    source's own; `sampled_tokens` and `evaluate` have the defaults of a source that generates
    nothing (its algorithm starts no generators)."""

    ctx: SourceContext

    @staticmethod
    def sampled_tokens(cfg) -> int:
        """Tokens every training prompt must leave room for within train.max_length, checked before any
        role starts (rlft.data.lengths): by default one response token (a longer response is cut to
        train.max_length when its row is built)."""
        return 1

    def evaluate(self, roles: dict[str, Any], examples: list, step: int, *, family, policy_version: int, samples,
                 show_progress: bool) -> dict[str, float]:
        """Held-out metrics after optimizer step `step` ({} when there is nothing to evaluate).

        roles: the run's role groups by kind; examples: the held-out examples (eval.num_examples of
        the task's eval split); family: the model family (rlft.families); policy_version: the version
        the generators hold; samples: the run's SampleLog (rlft.samples), for evaluation samples a
        person can read; show_progress: whether to show a progress bar.

        Here: learner rank 0 scores the examples as the model family does (`evaluate_on_learner`)."""
        ctx = self.ctx
        return family.evaluate_on_learner(roles["learner"], ctx.task, examples, ctx.cfg, tokenizer=ctx.tokenizer,
                                          chat=ctx.chat, step=step, show_progress=show_progress)


class SampledSource(Source):
    """A source that draws its items in an `EpochSampler` order: the sampler's state is the
    source's (what a resumed run needs to draw the same next batch)."""

    sampler: Any

    def state(self) -> dict[str, int]:
        return self.sampler.state()

    def load_state(self, state: dict[str, int]) -> None:
        self.sampler.load_state(state)
