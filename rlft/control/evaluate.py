"""`rlft eval`: score a checkpoint (or the base model) on a task's held-out split, in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from rlft.cluster import resolve_storage
from rlft.config import RLFTConfig
from rlft.data.collate import encode_prompt, uses_chat_template
from rlft.data.models import resolve_dtype
from rlft.data.tasks import build_task
from rlft.generation import greedy_generate
from rlft.modes import act_against, mode_metrics
from rlft.progress import progress_bar
from rlft.control.run_dirs import base_model_path


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
        path = checkpoint or base_model_path(cfg, run_warm_start=False)
        from rlft.families import family_name

        if family_name(path) != "causal_lm":
            raise ValueError(f"{path} is a {family_name(path)} model: `rlft eval` scores language models' answers; "
                             "diffusion runs log their evaluation (eval/*) during training, and "
                             "bench/drakes_dna.py compares checkpoints")
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)
    from peft import PeftModel

    recorded = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    base = Path(recorded) if recorded and Path(recorded).is_dir() else base_model_path(cfg, run_warm_start=False)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), checkpoint)
    return model, AutoTokenizer.from_pretrained(base)


def score_greedy(task, tokenizer, examples, chat: bool, eval_cfg,
                 generate_ids: Callable[[list[list[int]]], list[list[int]]],
                 description: str = "eval", show_progress: bool = True) -> tuple[list[float], list[int]]:
    """Greedy completions for examples in chunks of eval.batch_size: the task checker's score and
    the token count of each."""
    prompts = [encode_prompt(tokenizer, ex.prompt, chat) for ex in examples]
    completions: list[str] = []
    lengths: list[int] = []
    with progress_bar(description, len(prompts), show_progress) as advance:
        for start in range(0, len(prompts), eval_cfg.batch_size):
            chunk = prompts[start : start + eval_cfg.batch_size]
            ids = generate_ids(chunk)
            completions += tokenizer.batch_decode(ids, skip_special_tokens=True)
            # + the EOS that generation cut off (when it stopped before the limit), as rollouts count it
            lengths += [len(row) + (len(row) < eval_cfg.max_new_tokens) for row in ids]
            advance(len(chunk))
    return [task.score(ex, text) for ex, text in zip(examples, completions)], lengths


def eval_metrics(examples, scores: list[float], lengths: list[int]) -> dict[str, float]:
    """eval/accuracy, eval/examples, eval/tokens, and per reasoning mode when examples have one (rlft.modes)."""
    n = max(1, len(scores))
    return {"eval/accuracy": sum(scores) / n, "eval/examples": float(len(scores)), "eval/tokens": sum(lengths) / n,
            **mode_metrics(examples, [s >= 1.0 for s in scores], lengths)}


def _cut_at_stop(tokenizer, ids: list[int], stops: list[str]) -> list[int]:
    """The shortest prefix of ids whose text contains a stop string (the string kept, as vLLM's
    include_stop_str_in_output does), or all of ids."""
    for end in range(1, len(ids) + 1):
        if any(stop in tokenizer.decode(ids[:end], skip_special_tokens=True) for stop in stops):
            return ids[:end]
    return ids


def greedy_episodes(model, tokenizer, task, examples, chat: bool, eval_cfg, max_turns: int,
                    show_progress: bool = True) -> dict[str, float]:
    """Greedy multi-turn episodes in this process (the task answers the searches, as the environment
    role does in a run): the same metrics as a run's episode evaluation, except the reward components."""
    from rlft.retrieval.episode import f1
    from rlft.retrieval.episodes import TurnSample, run_episodes
    from rlft.sources.episodes import TURN_STOP, episode_metrics
    from rlft.types import Rollout

    with progress_bar("eval episodes", max_turns + 1, show_progress) as advance:
        def sample_turns(contexts: list[list[int]]) -> list[TurnSample]:
            rows = greedy_generate(model, tokenizer, contexts, eval_cfg.max_new_tokens, eval_cfg.batch_size)
            rows = [_cut_at_stop(tokenizer, row, TURN_STOP) for row in rows]
            advance(1)
            return [TurnSample(row, [0.0] * len(row), tokenizer.decode(row, skip_special_tokens=True)) for row in rows]

        prompts = [encode_prompt(tokenizer, ex.prompt, chat) for ex in examples]
        episodes = run_episodes(prompts, sample_turns, task.search,
                                lambda text: tokenizer(text, add_special_tokens=False)["input_ids"], max_turns)
    rollouts = [Rollout(ex, k, e.prompt_ids, e.completion_ids, e.logprobs, e.text, 0, e.finish_reason, e.segments,
                        info={"retrieved": e.retrieved, "answer": e.answer})
                for k, (ex, e) in enumerate(zip(examples, episodes))]
    n = max(1, len(rollouts))
    scores = [task.score(r.example, r.text) for r in rollouts]
    return {**eval_metrics(examples, scores, [len(r.completion_ids) for r in rollouts]),
            "eval/answer_f1": sum(f1(r.info["answer"] or "", r.example.answer) for r in rollouts) / n,
            **episode_metrics(rollouts, "eval")}


def evaluate_checkpoint(cfg: RLFTConfig, checkpoint: str | None, show_progress: bool = True) -> dict[str, Any]:
    from rlft.algorithms import ALGORITHMS

    cfg = resolve_storage(cfg)  # the run's own paths, so its warm start is found as the run recorded it
    model, tokenizer = load_for_eval(cfg, checkpoint)
    task = build_task(cfg.task)
    examples = task.split("eval")[: cfg.eval.num_examples]
    chat = uses_chat_template(tokenizer, cfg.data.chat_template)
    if "environment" in ALGORITHMS[cfg.algorithm.name].roles:  # multi-turn episodes with the task's retriever
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
