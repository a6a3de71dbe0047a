"""Masked discrete diffusion models over DNA (rlft.diffusion): loading, the parity probe, evaluation.

Evaluation (docs/algorithms.md#dna-evaluation-metrics). With generators (DRAKES) they sample `eval.num_examples`
sequences with the latest published weights and fixed seeds; the reward roles score them with
their components (the held-out evaluation oracle) and the task's checker:

  eval/pred_activity    median evaluation-oracle reward (the target's logit or log-odds)
  eval/accuracy         fraction the checking oracle classifies as the target cell type
  eval/kmer3_corr       Pearson correlation of 3-mer counts with the reference sequences
  eval/motif_corr       Spearman correlation of JASPAR motif hits with the reference sequences
  eval/log_likelihood   median approximate log-likelihood under the base (pretrained) model

The reference sequences are the top `diffusion.reference_fraction` of the data's target-cell
sequences ranked by the checking oracle. Without generators (pretraining) learner rank 0
reports the held-out NELBO per token and the k-mer statistics of its own samples.
"""

from __future__ import annotations

import statistics
from functools import cached_property

import torch

from rlft.types import Example, Rollout

PROBE_SEED = 1234
PROBE_MASKED_FRACTION = 0.5
NELBO_EVAL_SEQUENCES = 256


class MaskedDiffusion:
    name = "mdlm"

    def __init__(self):
        self._references: list[str] | None = None

    # ----------------------------------------------------------------- loading (controller and learners)
    def load_tokenizer(self, model_path):
        return None  # the vocabulary is fixed: A, C, G, T and [MASK] (rlft.data.dna)

    def uses_chat(self, tokenizer, mode: str) -> bool:
        return False

    def load_model(self, model_path, dtype: torch.dtype) -> torch.nn.Module:
        from rlft.diffusion.model import MDLM

        return MDLM.from_pretrained(model_path).to(dtype)

    def check_data(self, cfg, spec, model_path, tokenizer, chat, train_examples, eval_examples) -> None:
        """Every sequence has the model's length (the loader already refused other letters)."""
        import json
        from pathlib import Path

        length = json.loads((Path(model_path) / "config.json").read_text())["length"]
        for split, examples in (("train", train_examples), ("eval", eval_examples)):
            for index, example in enumerate(examples):
                if len(example.response or "") != length:
                    raise ValueError(f"{split} sequence {index} has {len(example.response or '')} bases; the model "
                                     f"{model_path} generates {length}")

    # ----------------------------------------------------------------- the parity probe
    def probe(self, ctrl) -> dict[str, torch.Tensor]:
        """A held-out sequence with a fixed half of its positions masked; scored where masked."""
        from rlft.data.dna import encode
        from rlft.diffusion.mdlm import MASK

        x0 = encode([(ctrl.eval_examples or ctrl.train_examples)[0].response])
        generator = torch.Generator().manual_seed(PROBE_SEED)
        masked = torch.rand(x0.shape, generator=generator) < PROBE_MASKED_FRACTION
        return {"x0": x0, "xt": torch.where(masked, torch.full_like(x0, MASK), x0)}

    def probe_logprobs(self, module, probe: dict[str, torch.Tensor]) -> torch.Tensor:
        return probe_logprobs(module, probe)

    # ----------------------------------------------------------------- learner-side helpers (family_call)
    def held_out_nelbo(self, module, ids: torch.Tensor, seed: int) -> float:
        """Mean NELBO per token (nats) of held-out sequences."""
        from rlft.diffusion.mdlm import nelbo
        from rlft.diffusion.schedule import LogLinearSchedule

        device = next(module.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        ids = ids.to(device)
        return float(nelbo(module, ids, LogLinearSchedule(), generator).mean()) / ids.shape[1]

    def sample_sequences(self, module, num: int, steps: int, seed: int, batch_size: int) -> list[str]:
        from rlft.data.dna import decode
        from rlft.diffusion.mdlm import sample
        from rlft.diffusion.schedule import LogLinearSchedule

        device = next(module.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        return decode(sample(module, num, steps, LogLinearSchedule(), generator, batch_size=batch_size))

    # ----------------------------------------------------------------- evaluation
    @cached_property
    def motifs(self):
        from rlft.diffusion.metrics import load_motifs

        return load_motifs()

    def references(self, ctrl) -> list[str]:
        """The top target-cell sequences of the data by the checking oracle (computed once per run)."""
        if self._references is None:
            from rlft.diffusion.metrics import top_sequences

            task = ctrl.task
            subset = task.data.subset(cell_type=task.cfg.target)
            self._references = top_sequences(subset, task.oracle, ctrl.cfg.diffusion.reference_fraction)
        return self._references

    def sequence_statistics(self, ctrl, sequences: list[str]) -> dict[str, float]:
        from rlft.diffusion.metrics import kmer_correlation, motif_correlation

        references = self.references(ctrl)
        return {"eval/kmer3_corr": kmer_correlation(sequences, references, k=3),
                "eval/motif_corr": motif_correlation(sequences, references, self.motifs)}

    def evaluate(self, ctrl, step: int) -> dict[str, float]:
        if "generator" not in ctrl.roles:
            return self._evaluate_on_learner(ctrl, step)
        ctrl.settle()
        cfg = ctrl.cfg
        generators = ctrl.roles["generator"]
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
        rollouts = [Rollout(example=Example(prompt="", response=None, answer=ctrl.task.cfg.target), group=0,
                            prompt_ids=[], completion_ids=[], logprobs=[], text=seq, version=version)
                    for seq in sequences]
        from rlft.sources.rollouts import score, split_evenly

        score(ctrl.roles["reward"], rollouts)
        # DRAKES's training samples never leave the learners' loss: these are the ones to read
        ctrl.samples.write(rollouts, step, step // ctrl.spec.optimizer_steps(cfg), ctrl.policy_version, source="eval")
        likelihoods = [ll for i, lls in enumerate(generators.call_each(
            "log_likelihood", [(chunk, cfg.diffusion.loglik_steps, seed + 4_001 + i) for i, chunk in
                               enumerate(split_evenly(sequences, len(generators)))])) for ll in lls]
        metrics = {"eval/pred_activity": statistics.median(r.reward for r in rollouts),
                   "eval/reward": statistics.fmean(r.reward for r in rollouts),
                   "eval/accuracy": statistics.fmean(float(r.correct) for r in rollouts),
                   "eval/log_likelihood": statistics.median(likelihoods),
                   **self.sequence_statistics(ctrl, sequences)}
        return metrics

    def _evaluate_on_learner(self, ctrl, step: int) -> dict[str, float]:
        """Pretraining: held-out NELBO per token and the statistics of rank 0's samples."""
        from rlft.data.dna import encode

        held_out = [ex.response for ex in ctrl.eval_examples[:NELBO_EVAL_SEQUENCES]]
        if not held_out:
            return {}
        cfg = ctrl.cfg
        nelbo = ctrl.learners.call_one(0, "family_call", "held_out_nelbo", encode(held_out), cfg.run.seed)
        sequences = ctrl.learners.call_one(0, "family_call", "sample_sequences", min(cfg.eval.num_examples, 256),
                                           cfg.diffusion.sample_steps, cfg.run.seed, cfg.diffusion.eval_batch)
        return {"eval/nelbo_per_token": nelbo, "eval/accuracy": statistics.fmean(
                    ctrl.task.classified_as_target(sequences)), **self.sequence_statistics(ctrl, sequences)}



@torch.no_grad()
def probe_logprobs(module, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-probabilities the denoiser gives the true tokens at the masked positions of a parity
    probe ({"xt", "x0"}): what learner and generators compare after a weight sync."""
    from rlft.diffusion.mdlm import MASK
    from rlft.diffusion.model import subs_log_probs

    xt, x0 = probe["xt"], probe["x0"]
    log_p = subs_log_probs(module(xt), xt, MASK).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return log_p[xt == MASK].float().cpu()
