"""Held-out evaluation's scoring: greedy completions checked by the task, and the eval/* metrics.

Shared by a run's evaluation (the sources' `evaluate`, rlft.sources; on learner rank 0 through the
causal LM family, rlft.families.causal_lm) and by `rlft eval` (rlft.control.evaluate), so that both
report the same numbers the same way.
"""

from __future__ import annotations

from typing import Callable

from rlft.data.collate import encode_prompt
from rlft.generation import greedy_generate
from rlft.modes import mode_metrics
from rlft.progress import progress_bar


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
    from rlft.retrieval.episodes import TURN_STOP, TurnSample, episode_metrics, run_episodes
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
