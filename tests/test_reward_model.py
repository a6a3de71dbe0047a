"""Reward models: the Bradley-Terry loss (rlft/algorithms/reward_model.py), the `reward_model` reward
component (rlft/rewards/reward_model.py), their config checks, and one short training run.

Golden values by hand. For scores r_w (chosen) and r_l (rejected) with margin m = r_w - r_l,
    L(m) = -log sigma(m) = log(1 + e^-m)
    m = 0  (a tie):  log 2                       = 0.6931471806
    m = 2:           log(1 + e^-2) = log(1.1353352832) = 0.1269280110
    m = -1:          log(1 + e)    = log(3.7182818285) = 1.3132616875
    dL/dr_w = -sigma(-m) = -e^-m / (1 + e^-m):  m = 0: -0.5;  m = 2: -0.1192029220
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from rlft.algorithms.base import StepCounts
from rlft.algorithms.reward_model import RewardModelConfig, bradley_terry_losses, log_metrics, micro_batch_loss
from rlft.config import ConfigError
from rlft.control import Controller
from rlft.types import Example, Rollout
from tests.helpers import tiny_config

LOG2 = 0.6931471806
PAIRS = "configs/data/dpo_tiny_arith_pairs.jsonl"


def test_bradley_terry_golden_values_and_gradient():
    chosen = torch.tensor([1.5, 3.0, 0.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([1.5, 1.0, 1.0], dtype=torch.float64)  # margins 0, 2, -1
    losses = bradley_terry_losses(chosen, rejected)
    torch.testing.assert_close(losses, torch.tensor([LOG2, 0.1269280110, 1.3132616875], dtype=torch.float64),
                               atol=1e-9, rtol=0)
    losses.sum().backward()
    torch.testing.assert_close(chosen.grad[:2], torch.tensor([-0.5, -0.1192029220], dtype=torch.float64),
                               atol=1e-9, rtol=0)
    # a huge margin neither overflows nor loses the tail: log(1 + e^-50) = e^-50 to double precision
    assert bradley_terry_losses(torch.tensor([50.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)) \
        .item() == pytest.approx(math.exp(-50), rel=1e-9)


class ScoreTable(torch.nn.Module):
    """A score model whose score of a row is a learnable value per token, summed over its real tokens."""

    def __init__(self, values):
        super().__init__()
        self.values = torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))

    def forward(self, input_ids, attention_mask):
        score = (self.values[input_ids] * attention_mask).sum(-1, keepdim=True)  # [B, 1]
        return SimpleNamespace(logits=score)


def _batch(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(map(len, rows))
    return {"input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "weight": torch.ones(len(rows))}


CFG = RewardModelConfig(path="unused.jsonl")


def test_micro_batch_loss_and_metrics_golden():
    """Token values 0, 1, 3: pair 1 scores (1, 1): a tie, log 2, counted wrong; pair 2 scores (3, 1):
    margin 2. Loss = (log 2 + 0.1269280110) / 2 pairs; accuracy 1/2; mean margin (0 + 2) / 2 = 1."""
    model = ScoreTable([0.0, 1.0, 3.0])
    batch = _batch([[1], [1], [2], [1, 0]])
    loss, sums = micro_batch_loss(model, batch, CFG, StepCounts(num_tokens=0, num_sequences=4))
    assert loss.item() == pytest.approx((LOG2 + 0.1269280110) / 2, abs=1e-6)  # the loss runs in float32
    logged = log_metrics(sums, steps=1)
    assert logged["train/pair_accuracy"] == 0.5 and logged["train/reward_margin"] == pytest.approx(1.0)
    assert logged["train/reward_chosen"] == pytest.approx(2.0) and logged["train/pairs"] == 2.0


def test_micro_batches_sum_to_the_full_batch_loss_and_gradient():
    """8 pairs as one micro-batch, or as 4 micro-batches of one pair each normalised by the same step
    counts: the same loss and gradient."""
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, 6, (int(n),), generator=gen).tolist() for n in torch.randint(1, 5, (16,), generator=gen)]
    counts = StepCounts(num_tokens=0, num_sequences=16)
    values = torch.randn(6, generator=gen, dtype=torch.float64).tolist()
    whole = ScoreTable(values)
    full, _ = micro_batch_loss(whole, _batch(rows), CFG, counts)
    full.backward()
    split = ScoreTable(values)
    total = 0.0
    for start in range(0, 16, 2):
        part, _ = micro_batch_loss(split, _batch(rows[start : start + 2]), CFG, counts)
        part.backward()
        total += part.item()
    assert total == pytest.approx(full.item(), abs=1e-6)  # float32 sums in another order
    torch.testing.assert_close(split.values.grad, whole.values.grad, atol=1e-6, rtol=0)


# ---- config checks -----------------------------------------------------------------------------------


def _rm(tmp_path, algorithm=None, **over):
    return tiny_config(tmp_path, "rm", algorithm={"name": "reward_model", "path": PAIRS, "eval_pairs": 8,
                                                  **(algorithm or {})}, **over)


@pytest.mark.parametrize("algorithm, over, message", [
    ({"eval_pairs": 5000}, {}, "holds out every one of the 1910 pairs"),
    ({"eval_path": PAIRS}, {}, "the held-out pairs come from one of them"),
    ({"eval_pairs": 0}, {"train": {"eval_every": 2}}, "set algorithm.eval_pairs"),
    ({"path": "nowhere.jsonl"}, {}, "algorithm.path=nowhere.jsonl: no such file"),
    ({}, {"train": {"micro_batch_size": 3, "batch_size": 6}}, "must be even"),
    ({}, {"peft": {"method": "pissa"}}, r"peft.method=pissa cannot train; use one that can \(full, lora\)"),
])
def test_config_errors_name_the_key_and_the_fix(tmp_path, algorithm, over, message):
    ctl = Controller(_rm(tmp_path, algorithm, **over), show_progress=False)
    with pytest.raises(ValueError, match=message):
        ctl.setup()
    assert ctl.learners is None


def test_rlft_eval_refuses_a_reward_model_recipe(tmp_path):
    from rlft.control.evaluate import evaluate_checkpoint

    with pytest.raises(ValueError, match="trains a 'score'-head model, which its run evaluates itself"):
        evaluate_checkpoint(_rm(tmp_path), None)


def test_reward_component_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="offset=1.0 applies to transform=sigmoid"):
        tiny_config(tmp_path, reward={"components": [{"name": "reward_model", "path": "x", "offset": 1.0}]})
    from rlft.rewards import REWARD_COMPONENTS

    spec = REWARD_COMPONENTS["reward_model"]
    with pytest.raises(FileNotFoundError, match=r"holds no model \(no config.json\); train one first"):
        spec.build(spec.config_cls(path=str(tmp_path)), None)


# ---- the reward component on a hand-built classifier --------------------------------------------------


def hand_scorer(folder, values: dict[str, float]):
    """The tiny Llama as a classifier whose score is values[last real character] (0 for others): attention
    and MLP outputs zeroed (o_proj, down_proj = 0), so the last position's hidden state is its own token
    embedding; embedding row t = sqrt(H) e_t, whose RMS norm is itself (final norm weight 1); head
    w = values / sqrt(H). pad = EOS, so the score is read at the completion's last character."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlft.data.model_config import ModelConfig
    from rlft.data.models import resolve_model

    base = resolve_model(ModelConfig(name="tiny"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, pad_token_id=tokenizer.eos_token_id)
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.model.embed_tokens.weight.copy_(math.sqrt(hidden) * torch.eye(model.config.vocab_size, hidden))
        model.score.weight.zero_()
        for char, value in values.items():
            model.score.weight[0, tokenizer.convert_tokens_to_ids(char)] = value / math.sqrt(hidden)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _rollout(prompt: str, text: str, group: int = 0) -> Rollout:
    return Rollout(example=Example(prompt=prompt, response=None, answer=None), group=group, prompt_ids=[],
                   completion_ids=[], logprobs=[], text=text, version=0)


@pytest.mark.parametrize("transform", ["raw", "sigmoid"])
def test_reward_component_scores_a_saved_classifier(tmp_path, transform):
    from rlft.rewards import REWARD_COMPONENTS
    from rlft.rewards.base import component_values

    hand_scorer(tmp_path / "rm", {"2": 1.5, "5": -2.0, "7": 0.25})
    spec = REWARD_COMPONENTS["reward_model"]
    cfg = spec.config_cls(path=str(tmp_path / "rm"), batch_size=2, transform=transform,
                          **({"offset": 0.5} if transform == "sigmoid" else {}))
    component = spec.build(cfg, None)
    # different lengths in one padded batch of 2, and a batch of 1
    rollouts = [_rollout("Q: 1+1\n", "A: 2"), _rollout("Q: 2+3\n", "1+4=5\nA: 5"), _rollout("Q: 3+4\n", "A: 7")]
    got = [v.value for v in component_values(rollouts, component)]
    raw = [1.5, -2.0, 0.25]
    want = raw if transform == "raw" else [1 / (1 + math.exp(-(r - 0.5))) for r in raw]  # sigma(1), sigma(-2.5), sigma(-0.25)
    assert got == pytest.approx(want, abs=1e-5)


# ---- one short run with DeepSpeed learner actors ------------------------------------------------------


def write_answer_pairs(path, n: int, seed: int) -> str:
    """Pairs a fresh tiny model can learn in a few dozen steps: the same prompt answered with letters
    where the digits should be (chosen) or with its sum (rejected). The preference is set against the
    untrained model's leaning (with seed 0 its random head ranks the digits first in ~9 of 10 pairs),
    so the held-out accuracy must travel from well under chance to over 0.9."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(10, 100), rng.randrange(10, 100)
        letters = "".join(rng.choice("abcdefghij") for _ in str(a + b))
        rows.append({"prompt": f"Q: {a}+{b}\n", "chosen": f"A: {letters}", "rejected": f"A: {a + b}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_reward_model_run_raises_held_out_pair_accuracy_and_saves_a_loadable_classifier(tmp_path):
    """LoRA (the head trained whole beside the adapters) on 2 DeepSpeed learner actors (Ray, local mode) at
    ZeRO-3 (the model loaded partitioned; the merged checkpoint gathered a bucket at a time), from the untrained tiny model: held-out pair accuracy rises from under chance to over 0.9. The final checkpoint is the
    merged classifier (AutoModelForSequenceClassification) with the adapter folder beside it, and it
    ranks the held-out pairs as the run's last evaluation did."""
    from transformers import AutoModelForSequenceClassification

    from rlft.data.jsonl import read_preference_pairs
    from rlft.rewards import REWARD_COMPONENTS

    train_path = write_answer_pairs(tmp_path / "train.jsonl", 256, seed=0)
    eval_path = write_answer_pairs(tmp_path / "eval.jsonl", 64, seed=1)
    cfg = tiny_config(tmp_path, "rm", runtime={"mode": "local"},
                      learner={"count": 2, "zero_stage": 3, "zero3_persistence_threshold": 1000, "zero3_live_mb": 1},
                      algorithm={"name": "reward_model", "path": train_path, "eval_path": eval_path},
                      peft={"method": "lora", "r": 8, "alpha": 16},
                      train={"steps": 30, "batch_size": 16, "micro_batch_size": 4, "lr": 1e-2, "eval_every": 15},
                      eval={"batch_size": 64})
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        ctl.loop()
    finally:
        ctl.close()
    run = tmp_path / "runs" / "rm"
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "eval/pair_accuracy" in line]
    accuracy = [e["eval/pair_accuracy"] for e in evals]
    assert [e["step"] for e in evals] == [0, 15, 30] and evals[-1]["eval/pairs"] == 64
    assert accuracy[0] < 0.5 and accuracy[-1] >= 0.9, accuracy
    final = run / "checkpoints" / "final"
    assert (final / "adapter" / "adapter_config.json").is_file()
    assert AutoModelForSequenceClassification.from_pretrained(final).config.num_labels == 1
    spec = REWARD_COMPONENTS["reward_model"]
    scorer = spec.build(spec.config_cls(path=str(final)), None)
    pairs = read_preference_pairs(eval_path)
    chosen = scorer.scores([p.prompt for p in pairs], [p.chosen for p in pairs])
    rejected = scorer.scores([p.prompt for p in pairs], [p.rejected for p in pairs])
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(pairs) == pytest.approx(accuracy[-1])
    assert sum(c - r for c, r in zip(chosen, rejected)) / len(pairs) == pytest.approx(evals[-1]["eval/reward_margin"],
                                                                                     rel=1e-3, abs=1e-4)


def test_pair_maker_takes_several_distinct_pairs_per_prompt_for_reward_models():
    import random

    from rlft.make_pairs import preference_rows

    examples = [Example("Q: 1+1\n", None, "2"), Example("Q: 2+2\n", None, "4")]
    completions = [["A: 2", "A: 3", "A: 2", "A: 5"], ["A: 4", "A: 1", "A: 4", "A: 4"]]
    rows = preference_rows(examples, completions, lambda ex, text: float(text == f"A: {ex.answer}"),
                           random.Random(0), per_prompt=4)
    # distinct texts: prompt 1 has 1 correct x 2 wrong = 2 pairs (under the cap of 4), prompt 2 has 1 x 1
    assert sorted((r["prompt"], r["chosen"], r["rejected"]) for r in rows) == [
        ("Q: 1+1\n", "A: 2", "A: 3"), ("Q: 1+1\n", "A: 2", "A: 5"), ("Q: 2+2\n", "A: 4", "A: 1")]
