"""Small recipes for tests: the tiny model, a few steps, no wandb unless asked."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml

from rlft.algorithms import ALGORITHMS
from rlft.algorithms.gppo import GPPOConfig
from rlft.config import RLFTConfig, config_from_dict, switch_peft_method
from rlft.data.collate import encode_prompt
from rlft.roles.learner import LearnerActor
from rlft.types import Rollout, Score


NAME_KEYS = {"task": "name", "algorithm": "name", "peft": "method"}  # what picks each named section's class


def tiny_config(tmp_path, name: str = "t", **sections) -> RLFTConfig:
    raw = {
        "run": {"name": name, "output_dir": str(tmp_path / "runs"), "seed": 0},
        "runtime": {"mode": "inline"},
        "model": {"name": "tiny"},
        "peft": {"method": "full"},
        "task": {"name": "arith", "train_size": 512, "eval_size": 16},
        "algorithm": {"name": "sft"},
        "train": {"steps": 2, "batch_size": 8, "micro_batch_size": 4, "lr": 1e-3, "grad_clip": 0.0, "max_length": 64},
        "learner": {"count": 1},
        "eval": {"num_examples": 8, "max_new_tokens": 24, "batch_size": 8},
        "tracking": {"wandb": "disabled", "plots": False},
    }
    for section, values in sections.items():
        if not isinstance(values, dict):  # a top-level value (e.g. resume="auto")
            raw[section] = values
        elif section in NAME_KEYS and values.get(NAME_KEYS[section], raw[section][NAME_KEYS[section]]) != \
                raw[section][NAME_KEYS[section]]:
            raw[section] = dict(values)  # another task, algorithm or PEFT method: its own keys only
        else:
            raw.setdefault(section, {}).update(values)
    return config_from_dict(raw, source="<test>")


def write_tiny_sft_recipe(path: Path, name: str, *, steps: int, batch_size: int, warmup_steps: int, task: dict,
                          eval: dict | None = None) -> Path:
    """A short full SFT of the tiny model in one process, as a recipe file: the warm start or teacher a
    test's run makes first (lr 3e-3, cosine, one micro-batch per step, max_length 64)."""
    raw = {"run": {"name": name}, "runtime": {"mode": "inline"}, "model": {"name": "tiny"}, "peft": {"method": "full"},
           "task": {"name": "arith", **task}, "algorithm": {"name": "sft"}, "learner": {"count": 1},
           "train": {"steps": steps, "batch_size": batch_size, "micro_batch_size": batch_size, "lr": 3.0e-3,
                     "warmup_steps": warmup_steps, "schedule": "cosine", "max_length": 64},
           **({"eval": eval} if eval is not None else {}), "tracking": {"wandb": "disabled", "plots": False}}
    path.write_text(f"# rlft train {path.name}\n" + yaml.safe_dump(raw, sort_keys=False))
    return path


# GPPO with LoRA, 1 vLLM generator (64 MiB of KV cache) and 1 learner rank, inline: the smallest RL loop.
RL = dict(
    algorithm={"name": "gppo", "group_size": 4},
    peft={"method": "lora", "r": 4, "alpha": 8},
    generator={"count": 1, "kv_cache_mb": 64},
    rollout={"max_new_tokens": 24},
    train={"batch_size": 8, "micro_batch_size": 4, "lr": 1e-2},
)


def rl_config(tmp_path, name: str, **over) -> RLFTConfig:
    sections = {k: dict(v) for k, v in RL.items()}
    for key, values in over.items():
        if key == "peft" and values.get("method", sections["peft"]["method"]) != sections["peft"]["method"]:
            # another PEFT method keeps the keys of RL's LoRA that it takes (r, alpha), as `peft.method=` does
            sections["peft"] = switch_peft_method(sections["peft"], values["method"])
        if isinstance(values, dict):
            sections.setdefault(key, {}).update(values)
        else:
            sections[key] = values
    return tiny_config(tmp_path, name, **sections)


class LearnerOnlyGPPOConfig(GPPOConfig):
    name: Literal["gppo_learner_only"] = "gppo_learner_only"


# GPPO's learner step without generators, for tests that need only the learner group. Defined in
# an importable module (not a test file) so that Ray learner actors can unpickle it.
LEARNER_ONLY_GPPO = dataclasses.replace(ALGORITHMS["gppo"], name="gppo_learner_only", roles=(),
                                        config_cls=LearnerOnlyGPPOConfig)


def held_out_probe(ctl) -> dict[str, torch.Tensor]:
    """The first held-out example with its reference response, as one padded row."""
    from rlft.data.collate import encode_sft, pad_rows

    ex = ctl.eval_examples[0]
    return pad_rows([encode_sft(ctl.tokenizer, ex.prompt, ex.response, 64, False)], ctl.tokenizer.pad_token_id)


def original_model_logprobs(cfg, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    """Token log-probs of the probe under the untouched model that cfg.model names."""
    from transformers import AutoModelForCausalLM

    from rlft.data.models import resolve_model
    from rlft.ops.logprobs import token_logprobs

    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model))
        return token_logprobs(base(input_ids=probe["input_ids"]).logits, probe["labels"])[0]


def synthetic_rollout_rows(ctl, n=8):
    """Rollout rows from reference responses with fixed advantages and perturbed old log-probs."""
    gen = torch.Generator().manual_seed(0)
    rollouts = []
    for i, ex in enumerate(ctl.train_examples[:n]):
        prompt = encode_prompt(ctl.tokenizer, ex.prompt, False)
        completion = ctl.tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [ctl.tokenizer.eos_token_id]
        logprobs = (-torch.rand(len(completion), generator=gen) * 2).tolist()
        rollouts.append(Rollout(ex, i // 4, prompt, completion, logprobs, ex.response, 0,
                                score=Score(reward=float(i % 3 == 0), correct=False)))
    return ctl.spec.build_rows(rollouts, ctl.row_ctx)[0]


def moving_rows(ctl, n_examples: int = 2):
    """Rows of rollouts sampled by the generators, with alternating rewards: every advantage is
    non-zero, so each update moves the policy."""
    from rlft.sources.rollouts import generate, score

    rollouts = generate(ctl.roles["generator"], ctl.tokenizer, False, ctl.train_examples[:n_examples], 4, 24, 1.0, 1.0,
                        seed=1)
    score(ctl.roles["reward"], rollouts)
    for i, r in enumerate(rollouts):
        r.score = Score(reward=float(i % 2), correct=False)
    return ctl.spec.build_rows(rollouts, ctl.row_ctx)[0]


def assert_probe_catches_a_skipped_load(ctl, rows, monkeypatch) -> None:
    """One more update, which generator 0 reports as loaded (the right fingerprint) without loading
    it: the parity probe must stop the publish."""
    from rlft.sync.protocol import SyncError

    ctl.optimize(rows)
    monkeypatch.setattr(ctl.roles["generator"].members[0], "load_weights", lambda payload: payload.fingerprint)
    with pytest.raises(SyncError, match="logprob parity probe"):
        ctl.sync.publish()


def two_source_steps(cfg):
    """Set up a run and take two optimizer steps on its source's first two batches, without evaluation or
    logging: (the learner's step outputs, rank 0's trainable state after them)."""
    from rlft.control import Controller

    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        outs = []
        for iteration in (1, 2):
            items, _ = ctl.source.next_batch(iteration, 0)
            outs.append(ctl.optimize(ctl.spec.build_rows(items, ctl.row_ctx)[0])[0])
        return outs, ctl.learners.call_one(0, "trainable_state")
    finally:
        ctl.close()



class StuckLearner(LearnerActor):
    """A learner rank whose second optimizer step never returns (a hang, for the timeout test);
    importable by Ray workers from here."""

    def train_step(self, micro_batches, counts):
        if counts.step >= 1:
            import time

            time.sleep(3600)
        return super().train_step(micro_batches, counts)


# Metric keys that measure time or memory: the rest of a run's log is deterministic.
UNTIMED = ("perf/", "sync/seconds", "sync/parity_seconds", "time")


def deterministic_rows(run_dir) -> list[dict]:
    """The run's metrics.jsonl rows without their timings."""
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(UNTIMED)} for row in rows]


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    """Every tensor of the run's final checkpoint."""
    from pathlib import Path

    from safetensors.torch import load_file

    out = {}
    for path in sorted((Path(run_dir) / "checkpoints" / "final").glob("*.safetensors")):
        out.update(load_file(path))
    return out


def assert_same_weights(a, b) -> None:
    """The two runs' final checkpoints hold the same tensors, bit for bit."""
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


class Bigram(torch.nn.Module):
    """A policy whose logits depend on the current token only (embedding -> linear): tiny and differentiable."""

    def __init__(self, vocab: int = 11, dim: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = torch.nn.Embedding(vocab, dim), torch.nn.Linear(dim, vocab)

    def logits(self, batch):
        return self.head(self.emb(batch["input_ids"]))


def response_batch(model, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """4 random sequences of 7 tokens from `gen`: 2 prompt tokens, responses of lengths 5, 3, 4, 2
    (the rest padding); with the model's per-token log-probs [4, 6] and label mask [4, 6]."""
    from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs

    input_ids = torch.randint(0, 11, (4, 7), generator=gen)
    labels = input_ids.clone()
    labels[:, :2] = IGNORE_INDEX
    for row, length in enumerate([5, 3, 4, 2]):
        labels[row, 2 + length:] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "attention_mask": (labels != IGNORE_INDEX).long(), "labels": labels}
    with torch.no_grad():
        logprobs, mask = token_logprobs(model.logits(batch), labels)
    return batch, logprobs, mask


def mismatched_batch(model, per_token_advantages: bool, prox_noise: float,
                     sampler_shift: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """`response_batch` (seed 1) with pi_prox = pi_theta + prox_noise * N(0, 1) and pi_sampler = pi_theta +
    0.8 * N(0, 1) (+ a shift per sequence), advantages per token or per sequence, and positives."""
    gen = torch.Generator().manual_seed(1)
    batch, logprobs, mask = response_batch(model, gen)
    batch["prox_logprobs"] = (logprobs + prox_noise * torch.randn(logprobs.shape, generator=gen)) * mask
    sampler = logprobs + 0.8 * torch.randn(logprobs.shape, generator=gen)
    batch["old_logprobs"] = (sampler if sampler_shift is None else sampler + sampler_shift) * mask
    if per_token_advantages:  # process advantages: a different value on every token
        batch["advantages"] = torch.randn(logprobs.shape, generator=gen) * mask
    else:
        batch["advantages"] = torch.tensor([[1.5], [-0.5], [-0.5], [0.5]]) * mask
    batch["positive"] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    return batch


def assert_micro_batches_sum_to_full_batch(model, batch, cfg, metric_keys, micro_batch_loss=None) -> tuple[tuple, dict]:
    """Step-global normalisers: micro-batches [0:1] + [1:4] give the full batch's loss, gradients and the
    sums of `metric_keys`; returns (the full batch's gradients, its metrics) for further checks.
    micro_batch_loss: the loss under test (None: gppo's)."""
    from rlft.algorithms.base import StepCounts, add_metric_sums, count_label_tokens
    from rlft.algorithms.gppo import micro_batch_loss as gppo_loss

    micro_batch_loss = micro_batch_loss or gppo_loss

    counts = StepCounts(*count_label_tokens(batch))
    full, m_full = micro_batch_loss(model, batch, cfg, counts)
    parts = [micro_batch_loss(model, {k: v[s] for k, v in batch.items()}, cfg, counts)
             for s in (slice(0, 1), slice(1, 4))]
    total = parts[0][0] + parts[1][0]
    torch.testing.assert_close(total, full)
    params = list(model.parameters())
    got, want = torch.autograd.grad(total, params), torch.autograd.grad(full, params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    summed = add_metric_sums(add_metric_sums({}, parts[0][1]), parts[1][1])
    for key in metric_keys:
        assert summed[key] == pytest.approx(m_full[key], rel=1e-5, abs=1e-6), key
    return want, m_full
