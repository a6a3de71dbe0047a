"""Multi-turn retrieval episodes as rollouts (IM-RAG, docs/algorithms.md#im-rag-episodes): prompts
from the train split, turns sampled by the generator roles, searches answered by the environment
role, rollouts scored by the reward roles (rlft.retrieval.episodes runs the turns). Evaluation
plays one greedy episode per held-out example the same way."""

from __future__ import annotations

from rlft.data.collate import encode_prompt
from rlft.retrieval.episodes import TURN_STOP, TurnSample, episode_metrics, run_episodes
from rlft.sources.rollouts import RolloutSource, split_evenly
from rlft.types import Rollout


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


class EpisodeSource(RolloutSource):
    """Rollouts that are multi-turn episodes with the environment role."""

    @staticmethod
    def sampled_tokens(cfg) -> int:
        """One response token, the default (not the rollout source's): an episode's turns and observations
        are cut to train.max_length when its row is built (rlft.rollouts.rollout_row)."""
        return 1

    def produce(self, prompts: list, group: int, seed: int) -> list[Rollout]:
        ctx, ro = self.ctx, self.ctx.cfg.rollout
        return generate_episodes(ctx.roles["generator"], ctx.roles["environment"], ctx.tokenizer, ctx.chat,
                                 prompts, group, ro.max_new_tokens, ro.temperature, ro.top_p, seed=seed,
                                 max_turns=ro.max_turns)

    def extra_metrics(self, rollouts: list[Rollout]) -> dict[str, float]:
        return episode_metrics(rollouts, "rollout")

    def produce_greedy(self, roles: dict, examples: list) -> list[Rollout]:
        """One greedy episode per held-out example (temperature 0, seed 0), at most rollout.max_turns searches."""
        ctx = self.ctx
        return generate_episodes(roles["generator"], roles["environment"], ctx.tokenizer, ctx.chat, examples, 1,
                                 ctx.cfg.eval.max_new_tokens, 0.0, 1.0, seed=0, max_turns=ctx.cfg.rollout.max_turns)

    def extra_eval_metrics(self, rollouts: list[Rollout], found: dict[str, float]) -> dict[str, float]:
        """Each reward component's mean, and how the episodes went."""
        return {**{k: v for k, v in found.items() if k != "eval/mean" and not k.startswith("eval/accuracy_")},
                **episode_metrics(rollouts, "eval")}
