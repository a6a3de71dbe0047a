"""In-learner sampling (DRAKES): the learners draw their own samples inside the loss, so a batch is
only the seeds of those draws. Seeds follow from the run seed and the iteration alone, so a
resumed run or a batch made again draws exactly the same noise.

Evaluation (docs/algorithms.md#dna-evaluation-metrics): the generators sample `eval.num_examples`
sequences with the latest published weights and fixed seeds; the reward roles score them with
their components (the held-out evaluation oracle) and the task's checker:

  eval/pred_activity    median evaluation-oracle reward (the target's logit or log-odds)
  eval/reward           mean evaluation-oracle reward
  eval/accuracy         fraction the checking oracle classifies as the target cell type
  eval/log_likelihood   median approximate log-likelihood under the base (pretrained) model
  eval/kmer3_corr       Pearson correlation of 3-mer counts with the reference sequences
  eval/motif_corr       Spearman correlation of JASPAR motif hits with the reference sequences

The last two are the model family's statistics (rlft.families.mdlm: the reference sequences are
the top `diffusion.reference_fraction` of the data's target-cell sequences by the checking oracle).
"""

from __future__ import annotations

import statistics

from rlft.types import Example
from rlft.sources import Source, SourceContext
from rlft.sources.rollouts import score, split_evenly
from rlft.types import Rollout

SEED_STRIDE = 1_000_003  # iterations' seed ranges never overlap for batches under a million rows


class SamplingSource(Source):
    def __init__(self, ctx: SourceContext):
        self.ctx = ctx

    def next_batch(self, iteration: int, policy_version: int) -> tuple[list[dict], dict[str, float]]:
        base = self.ctx.cfg.run.seed * 7_919 + iteration * SEED_STRIDE
        return [{"seed": base + i} for i in range(self.ctx.rows_per_batch())], {}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        return None

    def evaluate(self, roles: dict, examples: list, step: int, *, family, policy_version: int, samples,
                 show_progress: bool) -> dict[str, float]:
        """Diffusion samples from the generators, scored by the reward roles' oracles; the samples go
        to the run's samples.jsonl (DRAKES's training samples never leave the learners' loss)."""
        ctx = self.ctx
        cfg = ctx.cfg
        generators = roles["generator"]
        num = cfg.eval.num_examples
        shares = [num // len(generators) + (i < num % len(generators)) for i in range(len(generators))]
        seed = cfg.run.seed * 1_000_003  # the same evaluation noise at every step of a run
        outputs = generators.call_each("sample", [(share, seed + 10_007 * (i + 1), cfg.diffusion.sample_steps,
                                                  cfg.diffusion.eval_batch) for i, share in enumerate(shares)])
        sequences = [seq for out in outputs for seq in out["sequences"]]
        versions = {out["version"] for out in outputs}
        if len(versions) != 1:
            raise RuntimeError(f"generators sampled evaluation sequences with different policy versions: {versions}")
        version = versions.pop()
        rollouts = [Rollout(example=Example(prompt="", response=None, answer=ctx.task.cfg.target), group=0,
                            prompt_ids=[], completion_ids=[], logprobs=[], text=seq, version=version)
                    for seq in sequences]
        score(roles["reward"], rollouts)
        # DRAKES's training samples never leave the learners' loss: these are the ones to read
        samples.write(rollouts, step, step // ctx.spec.optimizer_steps(cfg), policy_version, source="eval")
        likelihoods = [ll for i, lls in enumerate(generators.call_each(
            "log_likelihood", [(chunk, cfg.diffusion.loglik_steps, seed + 4_001 + i) for i, chunk in
                               enumerate(split_evenly(sequences, len(generators)))])) for ll in lls]
        metrics = {"eval/pred_activity": statistics.median(r.reward for r in rollouts),
                   "eval/reward": statistics.fmean(r.reward for r in rollouts),
                   "eval/accuracy": statistics.fmean(float(r.correct) for r in rollouts),
                   "eval/log_likelihood": statistics.median(likelihoods),
                   **family.sequence_statistics(ctx.task, cfg.diffusion.reference_fraction, sequences)}
        return metrics
