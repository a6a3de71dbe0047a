"""`rlft eval`: score a checkpoint (or the base model) on a task's held-out split, in-process.

The scoring itself is the one a run's evaluation uses (rlft.eval_scoring); what this adds is
finding the model: a checkpoint folder, or the run's base model (its warm start's checkpoint when
the recipe has one, rlft.control.warm_start).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlft.cluster import resolve_storage
from rlft.config import RLFTConfig
from rlft.control.warm_start import base_model_path
from rlft.data.collate import uses_chat_template
from rlft.data.models import resolve_dtype
from rlft.data.tasks import build_task
from rlft.eval_scoring import eval_metrics, greedy_episodes, score_greedy
from rlft.generation import greedy_generate
from rlft.modes import act_against


def load_for_eval(cfg: RLFTConfig, checkpoint: str | None):
    """The model to score and its tokenizer.

    A full checkpoint folder is loaded as is; an adapter folder goes on the base model its
    adapter_config.json records (an absolute path), or, when that folder is gone, on the run's
    base model resolved from the config (the warm start's checkpoint when the recipe has one).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(cfg.model.dtype, "cpu")
    if checkpoint and not Path(checkpoint).is_dir():
        raise FileNotFoundError(f"checkpoint folder {checkpoint} does not exist")
    adapter_config = Path(checkpoint) / "adapter_config.json" if checkpoint else None
    if adapter_config is None or not adapter_config.is_file():
        path = checkpoint or base_model_path(cfg)
        from rlft.families import family_name

        if family_name(path) != "causal_lm":
            raise ValueError(f"{path} is a {family_name(path)} model: `rlft eval` scores language models' answers; "
                             "diffusion runs log their evaluation (eval/*) during training, and "
                             "bench/drakes_dna.py compares checkpoints")
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)
    from peft import PeftModel

    recorded = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    base = Path(recorded) if recorded and Path(recorded).is_dir() else base_model_path(cfg)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), checkpoint)
    return model, AutoTokenizer.from_pretrained(base)


def evaluate_checkpoint(cfg: RLFTConfig, checkpoint: str | None, show_progress: bool = True) -> dict[str, Any]:
    from rlft.algorithms import ALGORITHMS

    spec = ALGORITHMS[cfg.algorithm.name]
    if spec.model_head != "lm":
        from rlft.errors import RunError

        raise RunError(f"rlft eval scores a policy's greedy answers; algorithm {spec.name!r} trains a "
                       f"{spec.model_head!r}-head model, which its run evaluates itself (its held-out metrics are in "
                       "the run's metrics.jsonl)")
    cfg = resolve_storage(cfg)  # the run's own paths, so its warm start is found as the run recorded it
    model, tokenizer = load_for_eval(cfg, checkpoint)
    task = build_task(cfg.task)
    examples = task.split("eval")[: cfg.eval.num_examples]
    chat = uses_chat_template(tokenizer, cfg.data.chat_template)
    if "environment" in spec.roles:  # multi-turn episodes with the task's retriever
        metrics = greedy_episodes(model, tokenizer, task, examples, chat, cfg.eval, cfg.rollout.max_turns, show_progress)
        return {"checkpoint": checkpoint or "(base model)", **metrics}
    scores, lengths = score_greedy(
        task, tokenizer, examples, chat, cfg.eval,
        lambda chunk: greedy_generate(model, tokenizer, chunk, cfg.eval.max_new_tokens, cfg.eval.batch_size),
        show_progress=show_progress,
    )
    metrics = eval_metrics(examples, scores, lengths)
    act = act_against(metrics, metrics)  # a checkpoint on its own: its high mode is the base
    return {"checkpoint": checkpoint or "(base model)", **metrics, **({"eval/act": act} if act is not None else {})}
