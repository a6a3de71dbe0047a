"""Small recipes for tests: the tiny model, a few steps, no wandb unless asked."""

from __future__ import annotations

from rlft.config import RLFTConfig, config_from_dict


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
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw, source="<test>")
