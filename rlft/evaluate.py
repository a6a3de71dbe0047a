"""`rlft eval`: score a checkpoint (or the base model) on a task's held-out split, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

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


def score_greedy(task, tokenizer, examples, chat: bool, eval_cfg,
                 generate_ids: Callable[[list[list[int]]], list[list[int]]],
                 description: str = "eval", show_progress: bool = True) -> list[float]:
    """Greedy completions for examples in chunks of eval.batch_size, scored by the task's checker."""
    prompts = [encode_prompt(tokenizer, ex.prompt, chat) for ex in examples]
    completions: list[str] = []
    with progress_bar(description, len(prompts), show_progress) as advance:
        for start in range(0, len(prompts), eval_cfg.batch_size):
            chunk = prompts[start : start + eval_cfg.batch_size]
            completions += tokenizer.batch_decode(generate_ids(chunk), skip_special_tokens=True)
            advance(len(chunk))
    return [task.score(ex, text) for ex, text in zip(examples, completions)]


def evaluate_checkpoint(cfg: RLFTConfig, checkpoint: str | None, show_progress: bool = True) -> dict[str, Any]:
    model, tokenizer = load_for_eval(cfg, checkpoint)
    task = build_task(cfg.task)
    examples = task.split("eval")[: cfg.eval.num_examples]
    chat = uses_chat_template(tokenizer, cfg.data.chat_template)
    scores = score_greedy(
        task, tokenizer, examples, chat, cfg.eval,
        lambda chunk: greedy_generate(model, tokenizer, chunk, cfg.eval.max_new_tokens, cfg.eval.batch_size),
        show_progress=show_progress,
    )
    return {"checkpoint": checkpoint or "(base model)", "eval/accuracy": sum(scores) / max(1, len(scores)),
            "eval/examples": len(scores)}
