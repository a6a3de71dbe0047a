"""Masked discrete diffusion models over DNA (rlft.diffusion): loading, the parity probe, and the
hooks evaluation uses (docs/algorithms.md#dna-evaluation-metrics).

With generators (DRAKES) the sampling source evaluates (rlft.sources.sampling): the generators
sample, the reward roles score with the oracles, and this family adds the statistics of the
samples against reference sequences (`sequence_statistics`):

  eval/kmer3_corr       Pearson correlation of 3-mer counts with the reference sequences
  eval/motif_corr       Spearman correlation of JASPAR motif hits with the reference sequences

The reference sequences are the top `diffusion.reference_fraction` of the data's target-cell
sequences ranked by the checking oracle. Without generators (pretraining) learner rank 0
reports the held-out NELBO per token and the same statistics of its own samples
(`evaluate_on_learner`).
"""

from __future__ import annotations

import statistics
from functools import cached_property

import torch


PROBE_SEED = 1234
PROBE_MASKED_FRACTION = 0.5
NELBO_EVAL_SEQUENCES = 256


class MaskedDiffusion:
    name = "mdlm"
    heads = ("lm",)  # the denoiser only (AlgorithmSpec.model_head)

    def __init__(self):
        self._references: list[str] | None = None

    # ----------------------------------------------------------------- loading (controller and learners)
    def load_tokenizer(self, model_path):
        return None  # the vocabulary is fixed: A, C, G, T and [MASK] (rlft.data.dna)

    def uses_chat(self, tokenizer, mode: str) -> bool:
        return False

    def load_model(self, model_path, dtype: torch.dtype, head: str = "lm") -> torch.nn.Module:
        from rlft.diffusion.model import MDLM

        if head not in self.heads:
            raise ValueError(f"model head {head!r}: the mdlm family has only the denoiser ({', '.join(self.heads)})")

        return MDLM.from_pretrained(model_path).to(dtype)

    def check_data(self, cfg, model_path, tokenizer, chat, train_examples, eval_examples) -> None:
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

    def references(self, task, fraction: float) -> list[str]:
        """The top `fraction` of the data's target-cell sequences by the checking oracle (computed once per run)."""
        if self._references is None:
            from rlft.diffusion.metrics import top_sequences

            subset = task.data.subset(cell_type=task.cfg.target)
            self._references = top_sequences(subset, task.oracle, fraction)
        return self._references

    def sequence_statistics(self, task, fraction: float, sequences: list[str]) -> dict[str, float]:
        """eval/kmer3_corr and eval/motif_corr of `sequences` against the reference sequences."""
        from rlft.diffusion.metrics import kmer_correlation, motif_correlation

        references = self.references(task, fraction)
        return {"eval/kmer3_corr": kmer_correlation(sequences, references, k=3),
                "eval/motif_corr": motif_correlation(sequences, references, self.motifs)}

    def evaluate_on_learner(self, learners, task, examples: list, cfg, *, tokenizer, chat: bool, step: int,
                            show_progress: bool) -> dict[str, float]:
        """Pretraining (no generators): held-out NELBO per token and the statistics of rank 0's samples."""
        from rlft.data.dna import encode

        held_out = [ex.response for ex in examples[:NELBO_EVAL_SEQUENCES]]
        if not held_out:
            return {}
        nelbo = learners.call_lead("family_call", "held_out_nelbo", encode(held_out), cfg.run.seed)
        sequences = learners.call_lead("family_call", "sample_sequences", min(cfg.eval.num_examples, 256),
                                      cfg.diffusion.sample_steps, cfg.run.seed, cfg.diffusion.eval_batch)
        return {"eval/nelbo_per_token": nelbo, "eval/accuracy": statistics.fmean(task.classified_as_target(sequences)),
                **self.sequence_statistics(task, cfg.diffusion.reference_fraction, sequences)}


@torch.no_grad()
def probe_logprobs(module, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-probabilities the denoiser gives the true tokens at the masked positions of a parity
    probe ({"xt", "x0"}): what learner and generators compare after a weight sync."""
    from rlft.diffusion.mdlm import MASK
    from rlft.diffusion.model import subs_log_probs

    xt, x0 = probe["xt"], probe["x0"]
    log_p = subs_log_probs(module(xt), xt, MASK).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return log_p[xt == MASK].float().cpu()
