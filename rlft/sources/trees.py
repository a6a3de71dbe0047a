"""Preference trees grown by the generators (online tree preference optimization).

For every prompt of the batch a generator samples one root trajectory. The root is cut into steps
at `algorithm.step_delimiter` (rlft.data.steps), and for depth d = 0, 1, ... the generators sample
`algorithm.branches[d]` continuations of the prompt plus the root's first d steps: one batched
call per depth over every tree of the batch, so vLLM's prefix cache shares each prefix. Each leaf
(the root and every continuation) is a whole response: the shared prefix plus its own tokens,
within the root's token budget (rollout.max_new_tokens). The reward roles score every leaf, and
the leaves of one tree (one group id, leaf 0 the root) become one ranked list.

A root with d or fewer steps has no branch point at depth d (its last step would be cut off); its
list is shorter, and the algorithm pads it with loss-free rows. Every leaf carries its step
segments, from which the learner places the adaptive step reward.

Evaluation grows no trees: one greedy answer per held-out example, as the rollout source evaluates.
"""

from __future__ import annotations

import time

from rlft.data.collate import encode_prompt
from rlft.data.sampler import EpochSampler
from rlft.data.steps import completion_steps, segment_steps
from rlft.sources import SampledSource, SourceContext
from rlft.sources.rollouts import greedy_rollouts, held_out_metrics, reward_metrics, sample, score
from rlft.types import Rollout


def branch_points(steps: list[int], depth: int) -> int | None:
    """Tokens of the root before its step `depth` (the prefix kept), or None when the root has no
    step past `depth - 1` to branch from."""
    if depth == 0:
        return 0
    return next((t for t, step in enumerate(steps) if step >= depth), None)


def leaf(root: Rollout, cut: int, continuation: dict, tokenizer, delimiter: str) -> Rollout:
    """The root's first `cut` tokens followed by a sampled continuation, as a Rollout of the same tree."""
    ids = root.completion_ids[:cut] + continuation["completion_ids"]
    logprobs = root.logprobs[:cut] + continuation["logprobs"]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Rollout(root.example, root.group, root.prompt_ids, ids, logprobs, text, continuation["version"],
                   continuation["finish_reason"], completion_steps(tokenizer, ids, delimiter),
                   temperature=root.temperature)


class TreeSource(SampledSource):
    def __init__(self, ctx: SourceContext):
        self.ctx = ctx
        self.sampler = EpochSampler(len(ctx.train_examples), ctx.cfg.run.seed)

    def grow(self, examples: list, seed: int) -> list[Rollout]:
        """Every tree's leaves, tree by tree, the root first."""
        ctx, ro, algo = self.ctx, self.ctx.cfg.rollout, self.ctx.cfg.algorithm
        generators, delimiter = ctx.roles["generator"], algo.step_delimiter
        prompts = [encode_prompt(ctx.tokenizer, ex.prompt, ctx.chat) for ex in examples]
        trees = []
        for i, samples in enumerate(sample(generators, prompts, 1, ro.max_new_tokens, ro.temperature, ro.top_p, seed)):
            seed_root = Rollout(examples[i], i, prompts[i], [], [], "", 0, temperature=ro.temperature)
            root = leaf(seed_root, 0, samples[0], ctx.tokenizer, delimiter)
            trees.append([root])
        steps = [segment_steps(tree[0].segments, len(tree[0].completion_ids)) for tree in trees]  # the roots'
        for depth, count in enumerate(algo.branches):
            if count == 0:
                continue
            cuts = [branch_points(s, depth) for s in steps]
            growing = [i for i, cut in enumerate(cuts) if cut is not None and cut < ro.max_new_tokens]
            if not growing:
                continue
            results = sample(generators, [prompts[i] + trees[i][0].completion_ids[:cuts[i]] for i in growing], count,
                             [ro.max_new_tokens - cuts[i] for i in growing], ro.temperature, ro.top_p,
                             seed + 7919 * (depth + 1))
            for i, continuations in zip(growing, results):
                trees[i] += [leaf(trees[i][0], cuts[i], c, ctx.tokenizer, delimiter) for c in continuations]
        return [rollout for tree in trees for rollout in tree]

    def evaluate(self, roles: dict, examples: list, step: int, *, family, policy_version: int, samples,
                 show_progress: bool) -> dict[str, float]:
        """Greedy held-out answers, one per example, by the generators, scored by the reward roles."""
        if not examples:
            return {}
        ctx = self.ctx
        rollouts = greedy_rollouts(roles["generator"], ctx.tokenizer, ctx.chat, examples, ctx.cfg.eval.max_new_tokens)
        return held_out_metrics(roles["reward"], rollouts, ctx.task.name)[0]

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list[Rollout], dict[str, float]]:
        ctx = self.ctx
        size = ctx.spec.samples_per_prompt(ctx.cfg)
        examples = self.sampler.next_batch(ctx.train_examples, ctx.rows_per_batch() // size)
        t0 = time.time()
        leaves = self.grow(examples, seed=ctx.cfg.run.seed * 100_003 + iteration)
        t1 = time.time()
        score(ctx.roles["reward"], leaves)
        t2 = time.time()
        gen_tokens = sum(len(r.completion_ids) for r in leaves)
        return leaves, {
            **reward_metrics(leaves, ctx.task.name),
            "rollout/leaves_per_tree": len(leaves) / len(examples),
            "rollout/response_length": gen_tokens / len(leaves),
            "rollout/staleness": float(policy_version - min(r.version for r in leaves)),
            "perf/time_generate": t1 - t0, "perf/time_reward": t2 - t1,
        }
