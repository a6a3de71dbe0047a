"""Multi-turn retrieval episodes as rollouts (IM-RAG, docs/algorithms.md#im-rag-episodes): prompts
from the train split, turns sampled by the generator roles, searches answered by the environment
role, rollouts scored by the reward roles (rlft.retrieval.episodes runs the turns)."""

from __future__ import annotations

from rlft.data.collate import encode_prompt
from rlft.retrieval.episode import ANSWER_CLOSE, SEARCH_CLOSE, coverage
from rlft.retrieval.episodes import TurnSample, run_episodes
from rlft.sources.rollouts import RolloutSource, split_evenly
from rlft.types import Rollout

TURN_STOP = [SEARCH_CLOSE, ANSWER_CLOSE]


def _sample_turns(generators, max_new_tokens: int, temperature: float, top_p: float, seed: int):
    """sample_turns for run_episodes: one turn per context, the contexts spread over the generators;
    every call (turn) draws with its own seeds."""
    calls = iter(range(10**9))

    def sample_turns(contexts: list[list[int]]) -> list[TurnSample]:
        turn_seed = seed * 1_000 + next(calls) * 100_003
        chunks = split_evenly(list(range(len(contexts))), len(generators))
        results = generators.call_each("generate", [
            ([contexts[i] for i in chunk], 1, max_new_tokens, temperature, top_p, turn_seed + (chunk[0] if chunk else 0),
             TURN_STOP) for chunk in chunks])
        sampled = [per_prompt[0] for result in results for per_prompt in result]
        sample_turns.versions.update(s["version"] for s in sampled)
        return [TurnSample(s["completion_ids"], s["logprobs"], s["text"]) for s in sampled]

    sample_turns.versions = set()
    return sample_turns


def _search(environment):
    def search(queries: list[str]) -> list[list[dict]]:
        chunks = [c for c in split_evenly(queries, len(environment)) if c]
        return [docs for found in environment.call_each("search", [(c,) for c in chunks]) for docs in found]

    return search


def generate_episodes(generators, environment, tokenizer, chat: bool, examples: list, n: int, max_new_tokens: int,
                      temperature: float, top_p: float, seed: int, max_turns: int) -> list[Rollout]:
    """n episodes per example as Rollouts (group = the example's index)."""
    prompts = [encode_prompt(tokenizer, ex.prompt, chat) for ex in examples]
    sample_turns = _sample_turns(generators, max_new_tokens, temperature, top_p, seed)
    episodes = run_episodes([p for p in prompts for _ in range(n)], sample_turns, _search(environment),
                            lambda text: tokenizer(text, add_special_tokens=False)["input_ids"], max_turns)
    version = min(sample_turns.versions)
    return [Rollout(examples[k // n], k // n, e.prompt_ids, e.completion_ids, e.logprobs, e.text, version,
                    e.finish_reason, e.segments, temperature=temperature,
                    info={"retrieved": e.retrieved, "answer": e.answer})
            for k, e in enumerate(episodes)]


def episode_metrics(rollouts: list[Rollout], prefix: str) -> dict[str, float]:
    """Searches per episode, how episodes ended, and the evidence covered at the end."""
    n = len(rollouts)
    ended = [r.finish_reason or "" for r in rollouts]
    covered = [coverage({i for ids in r.info["retrieved"] for i in ids}, tuple(r.example.meta.get("supporting", ())))
               for r in rollouts]
    return {f"{prefix}/searches": sum(len(r.info["retrieved"]) for r in rollouts) / n,
            f"{prefix}/answered": sum(e == "answer" for e in ended) / n,
            f"{prefix}/malformed": sum(e.startswith("malformed") for e in ended) / n,
            f"{prefix}/coverage": sum(covered) / n}


class EpisodeSource(RolloutSource):
    """Rollouts that are multi-turn episodes with the environment role."""

    def produce(self, prompts: list, group: int, seed: int) -> list[Rollout]:
        ctx, ro = self.ctx, self.ctx.cfg.rollout
        return generate_episodes(ctx.roles["generator"], ctx.roles["environment"], ctx.tokenizer, ctx.chat,
                                 prompts, group, ro.max_new_tokens, ro.temperature, ro.top_p, seed=seed,
                                 max_turns=ro.max_turns)

    def extra_metrics(self, rollouts: list[Rollout]) -> dict[str, float]:
        return episode_metrics(rollouts, "rollout")
