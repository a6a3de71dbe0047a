"""Online TPO: steps of generated tokens, trees grown by the `trees` source, tree rows, and a run
with a real vLLM generator, the reward role and the adapter sync.

The loss itself is tested in tests/test_tpo.py; offline lists in tests/test_tpo_offline.py.
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

from rlft.algorithms import ALGORITHMS
from rlft.algorithms.base import RowContext
from rlft.algorithms.tpo import TPOConfig, tree_rows
from rlft.control import Controller, train
from rlft.data.model_config import ModelConfig
from rlft.data.models import resolve_model
from rlft.data.steps import segment_steps, step_segments, token_steps
from rlft.runtime import RoleGroup
from rlft.sources import SourceContext
from rlft.sources.trees import TreeSource, branch_points
from rlft.types import Example, Rollout, Score, Segment
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(ModelConfig(name="tiny")))


def _ids(tokenizer, text: str, eos: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])


# ---------------------------------------------------------------- steps of tokens


def test_token_steps_end_each_step_at_its_delimiter_and_eos_joins_the_last(tokenizer):
    ids = _ids(tokenizer, "7+8=15\n4+3+1=8\nA: 85")
    steps = token_steps(tokenizer, ids, "\n")
    assert steps == [0] * 7 + [1] * 8 + [2] * 6  # "7+8=15\n", "4+3+1=8\n", "A: 85" + EOS
    segments = step_segments(steps)
    assert segments == [Segment(0, 7), Segment(7, 15), Segment(15, 21)]
    assert segment_steps(segments, len(ids)) == steps
    # a trailing delimiter before EOS: EOS stays in the step the delimiter ended, it opens no step of its own
    assert token_steps(tokenizer, _ids(tokenizer, "1+2=3\n"), "\n") == [0] * 7
    assert token_steps(tokenizer, _ids(tokenizer, "ab||cd", eos=False), "||") == [0, 0, 0, 0, 1, 1]


def test_branch_points_keep_the_roots_first_steps():
    steps = [0, 0, 0, 1, 1, 2, 2, 2]
    assert [branch_points(steps, d) for d in range(4)] == [0, 3, 5, None]
    assert branch_points([0, 0, 0], 1) is None  # a one-step root has no proper prefix to branch from


# ---------------------------------------------------------------- growing trees


class ScriptedGenerator:
    """Returns, for every prompt, n continuations "<depth marker><k>\\n..." from a script, and records calls."""

    def __init__(self, tokenizer, roots: dict[int, str]):
        self.tokenizer, self.roots, self.calls = tokenizer, roots, []

    def generate(self, prompts, n, max_new_tokens, temperature, top_p, seed):
        self.calls.append({"prompts": prompts, "n": n, "limits": max_new_tokens, "seed": seed})
        out = []
        for prompt in prompts:
            if len(self.calls) == 1:  # the roots: the script says which trace each prompt gets
                texts = [self.roots[len(prompt)]]
            else:
                texts = [f"{len(self.calls) - 1}{k}\nA: 0" for k in range(n)]
            out.append([{"completion_ids": _ids(self.tokenizer, t), "logprobs": [-0.5] * len(_ids(self.tokenizer, t)),
                         "text": t, "finish_reason": "stop", "version": 3} for t in texts])
        return out


def _tree_source(tmp_path, tokenizer, generator, branches, max_new_tokens=40):
    cfg = tiny_config(tmp_path, algorithm={"name": "tpo", "branches": branches},
                      rollout={"max_new_tokens": max_new_tokens})
    ctx = SourceContext(cfg, ALGORITHMS["tpo"], None, tokenizer, False, [Example("Q: 1+1\n", "", {})],
                        {"generator": RoleGroup("gen", [generator], remote=False)})
    return TreeSource(ctx)


def test_trees_branch_from_each_prefix_in_one_call_per_depth(tmp_path, tokenizer):
    """Two prompts of different lengths, so the scripted roots differ: a three-step root branches at
    depths 0, 1 and 2; a one-step root only at depth 0. Continuations extend the root's prefix."""
    examples = [Example("Q: 1+2\n", "", {}), Example("Q: 10+20\n", "", {})]
    prompts = [tokenizer(ex.prompt, add_special_tokens=False)["input_ids"] for ex in examples]
    generator = ScriptedGenerator(tokenizer, {len(prompts[0]): "1+2=3\n0+0=0\nA: 3", len(prompts[1]): "A: 30"})
    source = _tree_source(tmp_path, tokenizer, generator, [2, 1, 1])
    leaves = source.grow(examples, seed=5)

    assert len(generator.calls) == 4 and [c["n"] for c in generator.calls] == [1, 2, 1, 1]
    assert len({c["seed"] for c in generator.calls}) == 4, "each depth samples with its own seed"
    depth1, depth2 = generator.calls[2], generator.calls[3]
    root0 = _ids(tokenizer, "1+2=3\n0+0=0\nA: 3")
    assert depth1["prompts"] == [prompts[0] + root0[:6]]  # prompt + "1+2=3\n": only the three-step root branches
    assert depth2["prompts"] == [prompts[0] + root0[:12]]
    assert depth1["limits"] == [40 - 6] and depth2["limits"] == [40 - 12]

    tree0 = [r for r in leaves if r.group == 0]
    tree1 = [r for r in leaves if r.group == 1]
    assert [r.text for r in tree0] == ["1+2=3\n0+0=0\nA: 3", "10\nA: 0", "11\nA: 0", "1+2=3\n20\nA: 0",
                                       "1+2=3\n0+0=0\n30\nA: 0"]
    assert [r.text for r in tree1] == ["A: 30", "10\nA: 0", "11\nA: 0"]
    deep = tree0[4]
    assert deep.completion_ids[:12] == root0[:12] and deep.logprobs == [-0.5] * len(deep.completion_ids)
    assert [(s.start, s.end) for s in deep.segments] == [(0, 6), (6, 12), (12, 15), (15, 20)]
    assert all(r.version == 3 and r.prompt_ids == prompts[r.group] for r in leaves)


def test_tree_rows_make_one_list_per_tree_padded_to_the_tree_size(tokenizer):
    cfg = TPOConfig(branches=[2, 1])
    prompt = _ids(tokenizer, "Q: 1+2\n", eos=False)
    leaves = []
    for group, texts in ((0, ["1+2=3\nA: 3", "1+2=4\nA: 4", "A: 3", "1+2=3\nA: 5"]), (1, ["A: 3", "A: 4"])):
        for text in texts:
            ids = _ids(tokenizer, text)
            leaves.append(Rollout(Example("", "", {}), group, prompt, ids, [0.0] * len(ids), text, 1,
                                  segments=step_segments(token_steps(tokenizer, ids, "\n")),
                                  score=Score(reward=float(text.endswith("3")), correct=text.endswith("3"))))
    rows, _ = tree_rows(leaves, RowContext(tokenizer, False, 64, cfg))
    assert len(rows) == 2 * cfg.list_size == 8
    assert [r["list_id"] for r in rows] == [0] * 4 + [1] * 4
    assert [r["valid"] for r in rows] == [1.0] * 4 + [1.0, 1.0, 0.0, 0.0]
    assert [r["score"] for r in rows[:4]] == [1.0, 0.0, 1.0, 0.0]
    first = rows[0]  # step ids sit on the position before each token: -1 over the prompt
    assert first["step_ids"][: len(prompt) - 1] == [-1] * (len(prompt) - 1)
    assert first["step_ids"][len(prompt) - 1:] == [0] * 6 + [1] * 5


def test_tree_config_checks(tmp_path):
    with pytest.raises(ValidationError, match="at least one continuation"):
        TPOConfig(branches=[0, 0])
    with pytest.raises(ValueError, match=r"train.batch_size=8 is not a multiple of the tree size "
                                         r"1 \+ sum\(algorithm.branches\)=5"):
        ALGORITHMS["tpo"].validate(tiny_config(tmp_path, algorithm={"name": "tpo", "branches": [2, 2]}))
    ALGORITHMS["tpo"].validate(tiny_config(tmp_path, algorithm={"name": "tpo", "branches": [2, 1]}))


# ---------------------------------------------------------------- a run


def test_online_tpo_run_end_to_end(tmp_path):
    """Online TPO with LoRA on the tiny model: 1 vLLM generator grows trees of 4 leaves (root, 2 samples
    of the prompt, 1 continuation after the root's first step), the reward role scores them with the
    per-step checker, 2 iterations of 1 optimizer step each, the adapter synced and verified."""
    cfg = tiny_config(
        tmp_path, "online", algorithm={"name": "tpo", "branches": [2, 1]}, peft={"method": "lora", "r": 4},
        generator={"count": 1, "kv_cache_mb": 64}, rollout={"max_new_tokens": 24},
        reward={"components": [{"name": "steps"}]},
        train={"steps": 2, "batch_size": 8, "micro_batch_size": 4, "lr": 1e-2})
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        leaves, metrics = ctl.source.next_batch(1, 0)
        summary = ctl.loop()
    finally:
        ctl.close()
    assert len(leaves) <= 8 and metrics["rollout/leaves_per_tree"] == len(leaves) / 2
    for group in (0, 1):
        tree = [r for r in leaves if r.group == group]
        root = tree[0]
        assert 3 <= len(tree) <= 4 and all(r.prompt_ids == root.prompt_ids for r in tree)
        if len(tree) == 4:  # the continuation shares the root's first step
            first = root.segments[0]
            assert tree[3].completion_ids[:first.end] == root.completion_ids[:first.end]
    assert summary["policy_version"] == 2
    rows = [json.loads(line) for line in (tmp_path / "runs" / "online" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in trained] == [1, 2]
    for key in ("rollout/leaves_per_tree", "reward/mean", "reward/steps", "train/pair_accuracy", "train/ndcg",
                "train/reward_margin", "sync/version", "sync/parity_max_abs_diff"):
        assert key in trained[-1], key
    assert max(r.get("sync/parity_max_abs_diff", 0.0) for r in rows) < 1e-3
    assert "eval/accuracy" in rows[-1]
