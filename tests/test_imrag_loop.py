"""The IM-RAG loop in the controller: GPPO on multi-turn episodes with the real environment role
(BM25 over the multi-hop corpus), real reward actor (answer F1 + progress tracker) and a real
learner rank; the generator is a scripted fake that plays the task's worked episodes turn by turn
(a unit test of the wiring; tests/test_episodes.py covers the pieces)."""

from __future__ import annotations

import json

import pytest

from rlft.control import train
from rlft.roles import ROLES
from tests.helpers import tiny_config

SKIP_SEARCH = {"on": False}  # True: the scripted questioner repeats its first search instead of the second


class ScriptedGenerator:
    """Writes the next turn of the worked episode of the question in the context."""

    def __init__(self, cfg, index, model_path, dtype, lora_rank, seed, cpu_bind=None):
        self.cfg, self.model_path, self.version = cfg, model_path, 0

    def setup(self):
        from transformers import AutoTokenizer

        from rlft.data.tasks import build_task

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.worked = {ex.prompt: ex.response for split in ("train", "eval") for ex in build_task(self.cfg.task).split(split)}
        return {}

    def _next_turn(self, text: str) -> str:
        prompt = next(p for p in self.worked if text.startswith(p))
        pieces = self.worked[prompt].split("</docs>")  # "<search>q</search><docs>...", ..., "<answer>a</answer>"
        turns = [piece.split("<docs>")[0] for piece in pieces[:-1]] + [pieces[-1]]
        k = text[len(prompt):].count("<search>")
        if SKIP_SEARCH["on"] and k == 1 and len(turns) > 2:
            return turns[0]
        return turns[min(k, len(turns) - 1)]

    def generate(self, prompts, n, max_new_tokens, temperature, top_p, seed, stop=None):
        out = []
        for ids in prompts:
            text = self._next_turn(self.tokenizer.decode(ids, skip_special_tokens=True))
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append([{"completion_ids": tokens, "logprobs": [-1.0] * len(tokens), "text": text,
                         "finish_reason": "stop", "version": self.version} for _ in range(n)])
        return out

    def load_weights(self, payload):
        self.version = payload.version
        return payload.fingerprint

    def close(self):
        pass


@pytest.fixture
def scripted():
    ROLES["generator"].register("scripted", ScriptedGenerator, replace=True)
    yield
    ROLES["generator"].unregister("scripted")
    SKIP_SEARCH["on"] = False


def _config(tmp_path, name):
    return tiny_config(
        tmp_path, name, runtime={"roles": {"generator": "scripted"}},
        model={"name": "tiny", "tiny": {"max_positions": 512}},
        task={"name": "multihop", "num_entities": 24, "distractors": 24},
        algorithm={"name": "gppo_episodes", "group_size": 2, "process_coef": 1.0},
        peft={"method": "lora", "r": 4, "alpha": 8}, generator={"count": 1}, sync={"weights": "merged", "parity_every": 0},
        reward={"components": [{"name": "answer_f1"}, {"name": "retrieval_progress", "weight": 0, "segment_weight": 1}]},
        rollout={"max_new_tokens": 40, "max_turns": 3}, eval={"num_examples": 4, "max_new_tokens": 40},
        train={"steps": 2, "batch_size": 4, "micro_batch_size": 2, "max_length": 448, "eval_every": 0})


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_worked_episodes_cover_all_evidence_and_answer_through_the_real_environment(tmp_path, scripted):
    summary = train(_config(tmp_path, "worked"), show_progress=False)
    rows = _rows(tmp_path / "runs" / "worked")
    trained = [r for r in rows if "train/loss" in r]
    assert len(trained) == 2 and summary["policy_version"] == 2
    for row in trained:
        assert row["rollout/coverage"] == 1.0 and row["rollout/answered"] == 1.0
        assert row["reward/answer_f1"] == 1.0 and row["reward/retrieval_progress"] == pytest.approx(1.0)
        assert 2.0 <= row["rollout/searches"] <= 3.0
    final = rows[-1]
    assert final["eval/accuracy"] == 1.0 and final["eval/coverage"] == 1.0 and final["eval/malformed"] == 0.0


def test_a_repeated_search_earns_no_progress(tmp_path, scripted):
    SKIP_SEARCH["on"] = True
    train(_config(tmp_path, "repeat"), show_progress=False)
    trained = [r for r in _rows(tmp_path / "runs" / "repeat") if "train/loss" in r]
    assert all(r["rollout/coverage"] < 1.0 and r["reward/retrieval_progress"] < 1.0 for r in trained)


def test_rlft_eval_plays_greedy_episodes_with_the_tasks_retriever(tmp_path, monkeypatch):
    """`rlft eval` on an episode recipe runs multi-turn episodes in-process (the task answers the
    searches, as the environment role does in a run). The greedy model is scripted to write the
    worked episode's next turn and then text past the closing tag: the turn is cut after the tag
    (as vLLM's stop strings do), the worked episodes answer every question with every supporting
    document covered, and a model that never closes a tag is malformed on every question."""
    import rlft.eval_scoring as scoring
    from rlft.control.evaluate import load_for_eval
    from rlft.data.tasks import build_task

    cfg = _config(tmp_path, "eval")
    model, tokenizer = load_for_eval(cfg, None)
    task = build_task(cfg.task)
    examples = task.split("eval")[:4]
    script = ScriptedGenerator(cfg, 0, None, None, 0, 0)
    script.worked = {ex.prompt: ex.response for ex in examples}

    def scripted_greedy(model, tokenizer, prompts, max_new_tokens, batch_size):
        texts = [script._next_turn(tokenizer.decode(ids, skip_special_tokens=True)) + "<search>junk" for ids in prompts]
        return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    monkeypatch.setattr(scoring, "greedy_generate", scripted_greedy)
    found = scoring.greedy_episodes(model, tokenizer, task, examples, False, cfg.eval, max_turns=3, show_progress=False)
    assert found["eval/accuracy"] == found["eval/answer_f1"] == found["eval/coverage"] == found["eval/answered"] == 1.0
    assert found["eval/searches"] == sum(ex.meta["hops"] for ex in examples) / 4 and found["eval/malformed"] == 0.0

    monkeypatch.setattr(scoring, "greedy_generate", lambda m, t, prompts, *a: [t("<search>never closed")["input_ids"]
                                                                             for _ in prompts])
    found = scoring.greedy_episodes(model, tokenizer, task, examples, False, cfg.eval, max_turns=3, show_progress=False)
    assert found["eval/accuracy"] == 0.0 and found["eval/malformed"] == 1.0 and found["eval/searches"] == 0.0
