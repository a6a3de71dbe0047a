"""TeacherActor: the teacher of on-policy distillation scores the student's rollouts.

The student samples; the teacher (a causal LM sharing the student's tokenizer) reads each rollout's
prompt + completion once, teacher-forced, and returns log pi_teacher of every completion token, under
the temperature the rollout was sampled at (the student's sampling log-probs are of the tempered
distribution too, so the two are comparable token by token). The algorithm turns the difference into
per-token advantages (rlft.algorithms.distill). No gradient, no optimizer: a forward pass per
micro-batch, on the learners' device and dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from rlft.data.collate import pad_token_id
from rlft.generation import eval_mode
from rlft.logs import set_library_loggers
from rlft.ops.logprobs import token_logprobs
from rlft.rollouts import pad_rollout_rows, rollout_row
from rlft.types import Rollout


def completion_logprobs(logprobs: torch.Tensor, prompt_lengths: list[int], lengths: list[int]) -> list[list[float]]:
    """Per row, the shifted log-probs [B, W-1] of its completion tokens: positions prompt - 1 .. length - 2
    (position t predicts token t + 1)."""
    return [logprobs[i, prompt - 1: length - 1].tolist() for i, (prompt, length) in enumerate(zip(prompt_lengths, lengths))]


class TeacherActor:
    """One teacher: `setup` loads the model, `logprobs(rollouts)` scores them."""

    def __init__(self, cfg, index: int, model_path: str, device: str, dtype: str, num_threads: int | None = None):
        self.cfg, self.index, self.model_path = cfg, index, model_path
        self.device, self.dtype_name, self.num_threads = device, dtype, num_threads
        self.model = None

    def setup(self) -> dict[str, Any]:
        from rlft.families import family_for

        set_library_loggers(self.cfg.runtime.log_level)
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        family = family_for(self.model_path)
        self.tokenizer = family.load_tokenizer(self.model_path)
        self.pad_id = pad_token_id(self.tokenizer)
        self.model = family.load_model(self.model_path, getattr(torch, self.dtype_name)).to(self.device)
        self.model.requires_grad_(False)
        return {"index": self.index, "model": self.model_path, "device": self.device, "dtype": self.dtype_name,
                "vocab": len(self.tokenizer), "params": sum(p.numel() for p in self.model.parameters())}

    @torch.no_grad()
    def logprobs(self, rollouts: list[Rollout]) -> list[list[float]]:
        """log pi_teacher(token | prefix) / T-tempered, for each completion token of each rollout (the
        completion cut to train.max_length as its training row is; observation tokens give 0)."""
        max_length = self.cfg.train.max_length
        rows = [rollout_row(r, 0.0, 0.0, max_length) for r in rollouts]
        found: list[list[float]] = []
        size = self.cfg.teacher.micro_batch_size
        with eval_mode(self.model):
            for start in range(0, len(rows), size):
                chunk = rows[start: start + size]
                batch = pad_rollout_rows(chunk, self.pad_id)
                logits = self.model(input_ids=batch["input_ids"].to(self.device),
                                    attention_mask=batch["attention_mask"].to(self.device)).logits
                logits = logits / batch["temperature"].to(logits.device, logits.dtype).view(-1, 1, 1)
                logprobs, _ = token_logprobs(logits, batch["labels"].to(self.device))
                found += completion_logprobs(logprobs.cpu(), [len(r.prompt_ids) for r in rollouts[start: start + size]],
                                             [len(row["input_ids"]) for row in chunk])
        return found

    def memory(self) -> dict[str, float]:
        from rlft.memory import process_memory

        return process_memory()

    def close(self) -> None:
        self.model = None
