"""`rlft eval`: score a checkpoint (or the base model) on a task's held-out split, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlft.config import RLFTConfig
from rlft.data.collate import encode_prompt, uses_chat_template
from rlft.data.models import resolve_dtype, resolve_model
from rlft.data.tasks import build_task
from rlft.generation import greedy_generate
from rlft.progress import progress_bar


def load_for_eval(cfg: RLFTConfig, checkpoint: str | None):
    """Base model (+ PEFT adapter when the checkpoint is an adapter folder) and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = resolve_model(cfg.model)
    dtype = resolve_dtype(cfg.model.dtype, "cpu")
    if checkpoint and not Path(checkpoint).is_dir():
        raise FileNotFoundError(f"checkpoint folder {checkpoint} does not exist")
    if checkpoint and (Path(checkpoint) / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype), checkpoint)
    else:
        model = AutoModelForCausalLM.from_pretrained(checkpoint or base_path, dtype=dtype)
    return model, AutoTokenizer.from_pretrained(base_path)


def evaluate_checkpoint(cfg: RLFTConfig, checkpoint: str | None, show_progress: bool = True) -> dict[str, Any]:
    model, tokenizer = load_for_eval(cfg, checkpoint)
    task = build_task(cfg.task)
    examples = task.split("eval")[: cfg.eval.num_examples]
    chat = uses_chat_template(tokenizer, cfg.data.chat_template)
    prompts = [encode_prompt(tokenizer, ex.prompt, chat) for ex in examples]
    completions: list[str] = []
    with progress_bar("eval", len(prompts), show_progress) as advance, torch.inference_mode():
        for start in range(0, len(prompts), cfg.eval.batch_size):
            chunk = prompts[start : start + cfg.eval.batch_size]
            ids = greedy_generate(model, tokenizer, chunk, cfg.eval.max_new_tokens, cfg.eval.batch_size)
            completions += tokenizer.batch_decode(ids, skip_special_tokens=True)
            advance(len(chunk))
    scores = [task.score(ex, text) for ex, text in zip(examples, completions)]
    return {"checkpoint": checkpoint or "(base model)", "eval/accuracy": sum(scores) / max(1, len(scores)),
            "eval/examples": len(scores)}
