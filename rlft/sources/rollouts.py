"""Rollouts: prompts from the train split, sampled by the generators and scored by the reward roles.

One batch = rows_per_batch / samples_per_prompt prompts, each sampled samples_per_prompt times
(one group id per prompt). Evaluation is the same with one greedy sample per held-out example
(`greedy_rollouts`, `held_out_metrics`), which the tree source shares.
"""

from __future__ import annotations

import time

from rlft.data.collate import encode_prompt
from rlft.data.sampler import EpochSampler
from rlft.data.steps import completion_steps
from rlft.eval_scoring import eval_metrics
from rlft.modes import mode_metrics
from rlft.rollouts import batch_staleness, observation_mask
from rlft.sources import SampledSource, SourceContext
from rlft.types import Rollout


def split_evenly(items: list, parts: int) -> list[list]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def sample(generators, prompts: list[list[int]], n: int, max_new_tokens: int | list[int], temperature: float,
           top_p: float, seed: int) -> list[list[dict]]:
    """n samples per tokenised prompt (max_new_tokens: one for all, or one per prompt), the prompts
    spread evenly over the generator roles; results in prompt order. Sample j of prompt p draws with
    seed * 100_000 + p * n + j: every sample of the batch has its own random stream (a generator
    gives its i-th prompt seed + i * n, and vLLM its j-th sample that + j)."""
    chunks = split_evenly(list(range(len(prompts))), len(generators))
    limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    results = generators.call_each("generate", [
        ([prompts[i] for i in chunk], n, [limits[i] for i in chunk], temperature, top_p,
         seed * 100_000 + chunk[0] * n if chunk else 0)
        for chunk in chunks
    ])
    return [samples for per_prompt in results for samples in per_prompt]


def generate(generators, tokenizer, chat: bool, examples: list, n: int, max_new_tokens: int,
             temperature: float, top_p: float, seed: int, step_delimiter: str | None = None) -> list[Rollout]:
    """n samples per example as Rollouts; group = the example's index. With a step delimiter each
    rollout carries its step segments (rlft.data.steps)."""
    prompts = [encode_prompt(tokenizer, ex.prompt, chat) for ex in examples]
    per_prompt = sample(generators, prompts, n, max_new_tokens, temperature, top_p, seed)
    return [Rollout(examples[i], i, prompts[i], s["completion_ids"], s["logprobs"], s["text"], s["version"],
                    s["finish_reason"],
                    completion_steps(tokenizer, s["completion_ids"], step_delimiter) if step_delimiter else [],
                    temperature=temperature, token_versions=spanning_versions(s))
            for i, samples in enumerate(per_prompt) for s in samples]


def spanning_versions(sample: dict) -> list[int]:
    """Each token's version when a weight update arrived while the sample was drawn; else [] (one version)."""
    versions = sample.get("versions") or []
    return list(versions) if len(set(versions)) > 1 else []


def split_groups(rollouts: list[Rollout], parts: int) -> list[list[Rollout]]:
    """`parts` chunks of whole groups (group-relative rewards need every member), as even as groups allow."""
    groups: dict[int, list[Rollout]] = {}
    for r in rollouts:
        groups.setdefault(r.group, []).append(r)
    return [[r for group in chunk for r in group] for chunk in split_evenly(list(groups.values()), parts)]


def score(rewards, rollouts: list[Rollout]) -> None:
    """Attach a Score to every rollout, whole groups spread evenly over the reward roles."""
    chunks = split_groups(rollouts, len(rewards))
    for chunk, scores in zip(chunks, rewards.call_each("score", [(c,) for c in chunks])):
        for rollout, s in zip(chunk, scores):
            rollout.score = s


def reward_metrics(rollouts: list[Rollout], task_name: str, prefix: str = "reward") -> dict[str, float]:
    n = len(rollouts)
    metrics = {f"{prefix}/mean": sum(r.reward for r in rollouts) / n,
               f"{prefix}/accuracy_{task_name}": sum(r.correct for r in rollouts) / n}
    for name in rollouts[0].scored.components:
        metrics[f"{prefix}/{name}"] = sum(r.scored.components[name] for r in rollouts) / n
    return metrics


def greedy_rollouts(generators, tokenizer, chat: bool, examples: list, max_new_tokens: int) -> list[Rollout]:
    """One greedy completion per held-out example (temperature 0, seed 0) by the generators, at the
    policy version they hold."""
    return generate(generators, tokenizer, chat, examples, 1, max_new_tokens, 0.0, 1.0, seed=0)


def held_out_metrics(rewards, rollouts: list[Rollout], task_name: str) -> tuple[dict[str, float], dict[str, float]]:
    """Scores held-out rollouts with the reward roles: (eval/accuracy, eval/examples, eval/tokens, per
    reasoning mode too, and eval/reward; every reward metric under eval/, from `reward_metrics`)."""
    score(rewards, rollouts)
    found = reward_metrics(rollouts, task_name, prefix="eval")
    return {**eval_metrics([r.example for r in rollouts], [float(r.correct) for r in rollouts],
                           [len(r.completion_ids) for r in rollouts]), "eval/reward": found["eval/mean"]}, found


class RolloutSource(SampledSource):
    """Prompts from the train split, a group of completions per prompt, scored by the reward roles.
    Subclasses change how completions are produced (`produce`, `produce_greedy`) and what else is
    logged (`extra_metrics`, `extra_eval_metrics`)."""

    def __init__(self, ctx: SourceContext):
        self.ctx = ctx
        self.sampler = EpochSampler(len(ctx.train_examples), ctx.cfg.run.seed)

    @staticmethod
    def sampled_tokens(cfg) -> int:
        """Room for every token the generators may sample after a prompt: rollout.max_new_tokens."""
        return cfg.rollout.max_new_tokens

    def evaluate(self, roles: dict, examples: list, step: int, *, family, policy_version: int, samples,
                 show_progress: bool) -> dict[str, float]:
        """Greedy held-out answers, one per example, by the generators (the current policy version),
        scored by the reward roles. An algorithm that runs this source without generators (a test's
        learner-only variant) is evaluated on learner rank 0 (`Source.evaluate`)."""
        if "generator" not in roles:
            return super().evaluate(roles, examples, step, family=family, policy_version=policy_version,
                                    samples=samples, show_progress=show_progress)
        if not examples:
            return {}
        rollouts = self.produce_greedy(roles, examples)
        metrics, found = held_out_metrics(roles["reward"], rollouts, self.ctx.task.name)
        metrics.update(self.extra_eval_metrics(rollouts, found))
        return metrics

    def produce_greedy(self, roles: dict, examples: list) -> list[Rollout]:
        ctx = self.ctx
        return greedy_rollouts(roles["generator"], ctx.tokenizer, ctx.chat, examples, ctx.cfg.eval.max_new_tokens)

    def extra_eval_metrics(self, rollouts: list[Rollout], found: dict[str, float]) -> dict[str, float]:
        """Evaluation metrics beside the held-out accuracy and reward; `found`: every reward metric under eval/."""
        return {}

    def produce(self, prompts: list, group: int, seed: int) -> list[Rollout]:
        ctx, ro = self.ctx, self.ctx.cfg.rollout
        return generate(ctx.roles["generator"], ctx.tokenizer, ctx.chat, prompts, group, ro.max_new_tokens,
                        ro.temperature, ro.top_p, seed=seed, step_delimiter=ro.step_delimiter)

    def extra_metrics(self, rollouts: list[Rollout]) -> dict[str, float]:
        return {**({"rollout/steps": sum(len(r.segments) for r in rollouts) / len(rollouts)}
                   if self.ctx.cfg.rollout.step_delimiter else {}),
                **mode_metrics([r.example for r in rollouts], [r.correct for r in rollouts],
                               [len(r.completion_ids) for r in rollouts], prefix="rollout")}

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list[Rollout], dict[str, float]]:
        ctx = self.ctx
        group = ctx.spec.samples_per_prompt(ctx.cfg)
        prompts = self.sampler.next_batch(ctx.train_examples, ctx.rows_per_batch() // group)
        t0 = time.time()
        rollouts = self.produce(prompts, group, seed=ctx.cfg.run.seed * 100_003 + iteration)
        t1 = time.time()
        score(ctx.roles["reward"], rollouts)
        t2 = time.time()
        tokens = sum(len(r.completion_ids) for r in rollouts)
        # the model's own tokens: what an environment inserted (observations) was not generated
        gen_tokens = tokens - sum(sum(observation_mask(r)) for r in rollouts)
        return rollouts, {
            **reward_metrics(rollouts, ctx.task.name),
            "rollout/response_length": tokens / len(rollouts),
            "rollout/staleness": float(batch_staleness(rollouts, policy_version)),
            "rollout/spanning_versions": sum(bool(r.token_versions) for r in rollouts) / len(rollouts),
            "perf/time_generate": t1 - t0, "perf/time_reward": t2 - t1,
            "perf/gen_tokens_per_s": gen_tokens / max(t1 - t0, 1e-9),
            **self.extra_metrics(rollouts),
        }
