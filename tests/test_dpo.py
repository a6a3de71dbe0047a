"""DPO (docs/algorithms.md#dpo): golden values and gradients of the loss, pair layout and step-global
normalisation, pairing of online groups, the full-fine-tuning reference, and runs offline
(pairs file, DeepSpeed learners) and online (vLLM generator, reward role) through the controller.

Notation of the derivations: h = (log pi_w - log pi_l) - (log pi_ref_w - log pi_ref_l), x = beta h,
and log sigma(-x) = log sigma(x) - x.
"""

from __future__ import annotations

import json
import math
from typing import Literal

import pytest
import torch
from pydantic import ValidationError

from rlft.algorithms import ALGORITHMS
from rlft.algorithms.base import RowContext, StepCounts
from rlft.algorithms.dpo import (
    DPOConfig,
    OfflineDPOConfig,
    best_worst,
    correct_incorrect,
    count_pair_rows,
    filler_pair,
    ipo_loss,
    log_metrics,
    micro_batch_loss,
    pad_pair_rows,
    preference_logits,
    rollout_pair_rows,
    sequence_logprobs,
    sequence_row,
    sigmoid_loss,
)
from rlft.control import Controller, train
from rlft.data.arith import ArithConfig, ArithTask
from rlft.ops.logprobs import IGNORE_INDEX
from rlft.rewards import REWARD_COMPONENTS
from rlft.rewards.base import ComponentConfig, ComponentSpec, ComponentValue
from rlft.types import Example, Rollout, Score
from tests.helpers import held_out_probe, original_model_logprobs, tiny_config, two_source_steps

LOG2 = math.log(2.0)


def _pair_loss(policy_w, policy_l, ref_w, ref_l, beta, eps=0.0):
    return sigmoid_loss(preference_logits(policy_w, policy_l, ref_w, ref_l), beta, eps)


# ---------------------------------------------------------------- properties of the loss (docs/algorithms.md#dpo)


@pytest.mark.parametrize("beta, eps", [(0.1, 0.0), (0.5, 0.0), (2.0, 0.2)])
def test_policy_equal_to_reference_gives_log_2_exactly(beta, eps):
    """pi = pi_ref => h = 0 => -(1 - eps) log sigma(0) - eps log sigma(0) = log 2, whatever beta, eps."""
    logps = -torch.rand(2, 5, dtype=torch.float64) * 20
    loss = _pair_loss(logps[0], logps[1], logps[0], logps[1], beta, eps)
    assert torch.equal(loss, torch.full((5,), LOG2, dtype=torch.float64))


def test_swapping_chosen_and_rejected_gives_minus_log_sigmoid_minus_beta_h():
    beta = 0.3
    pw, pl, rw, rl = (-torch.rand(16, dtype=torch.float64) * 10 for _ in range(4))
    h = preference_logits(pw, pl, rw, rl)
    swapped = _pair_loss(pl, pw, rl, rw, beta)
    torch.testing.assert_close(swapped, -torch.nn.functional.logsigmoid(-beta * h), rtol=0, atol=1e-15)


def test_gradient_weight_is_sigmoid_of_minus_beta_h_and_decreases_with_the_margin():
    """dL/dlog pi_w = -beta sigma(-beta h) / P and dL/dlog pi_l = +beta sigma(-beta h) / P for the
    mean over P pairs; the weight sigma(-beta h) is in (0, 1) and falls as the margin h grows."""
    beta = 0.5
    h = torch.linspace(-6, 6, 13, dtype=torch.float64)
    pw = h.clone().requires_grad_()  # log pi_w = h, the other three log-probs 0
    pl = torch.zeros_like(h, requires_grad=True)
    zero = torch.zeros_like(h)
    _pair_loss(pw, pl, zero, zero, beta).mean().backward()
    weight = torch.sigmoid(-beta * h)
    torch.testing.assert_close(pw.grad, -beta * weight / len(h))
    torch.testing.assert_close(pl.grad, beta * weight / len(h))
    assert ((weight > 0) & (weight < 1)).all() and (weight[1:] < weight[:-1]).all()


def test_conservative_dpo_golden():
    """beta = 0.5, h = 2, eps = 0.1: x = 1 and -(1 - eps) log sigma(x) - eps log sigma(-x)
    = -log sigma(x) + eps x = log(1 + e^-1) + 0.1 = 0.3132616875... + 0.1 = 0.4132616875..."""
    loss = sigmoid_loss(torch.tensor([2.0], dtype=torch.float64), 0.5, 0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)) + 0.1, abs=1e-12)
    assert loss.item() == pytest.approx(0.4132616875182228, abs=1e-12)


def test_ipo_original_and_length_normalised_golden():
    """beta = 0.25, so the IPO target 1/(2 beta) = 2.
    chosen:   policy tokens [-1, -3] (sum -4, mean -2), reference [-3, -3] (sum -6, mean -3);
    rejected: policy [-3, -3, -3] (sum -9, mean -3), reference [-2, -2, -2] (sum -6, mean -2).
    Original IPO (sums):  h = (-4 + 9) - (-6 + 6) = 5, loss (5 - 2)^2 = 9.
    TRL's length-normalised IPO (means): h = (-2 + 3) - (-3 + 2) = 2, loss (2 - 2)^2 = 0."""
    policy = torch.tensor([[-1.0, -3.0, 0.0], [-3.0, -3.0, -3.0]], dtype=torch.float64)
    ref = torch.tensor([[-3.0, -3.0, 0.0], [-2.0, -2.0, -2.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    for normalised, expected in ((False, 9.0), (True, 0.0)):
        p, r = sequence_logprobs(policy, mask, normalised), sequence_logprobs(ref, mask, normalised)
        assert ipo_loss(preference_logits(p[0:1], p[1:2], r[0:1], r[1:2]), 0.25).item() == expected


def test_reference_free_golden(tmp_path):
    """Reference terms := 0: h = log pi_w - log pi_l = -3 - (-5) = 2; beta = 0.5 gives x = 1 and
    loss -log sigma(1) = log(1 + e^-1) = 0.3132616875..."""
    model = _TableModel(seed=0, reference=False)
    batch, policy = model.batch_with_logprobs([-3.0, -5.0])
    cfg = OfflineDPOConfig(path="unused", beta=0.5, reference_free=True)
    loss, metrics = micro_batch_loss(model, batch, cfg, StepCounts(num_tokens=2, num_sequences=2))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)
    assert metrics["reward_chosen_sum"] == pytest.approx(-1.5) and metrics["reward_rejected_sum"] == pytest.approx(-2.5)
    assert not ALGORITHMS["dpo_offline"].needs_reference(tiny_config(tmp_path, algorithm=cfg.model_dump()))


def test_rpo_nll_term_golden():
    """nll_coef alpha adds alpha * (-log pi(y_w) / |y_w|): one-token responses with log pi_w = -3,
    log pi_l = -5, reference-free, beta = 0.5: log(1 + e^-1) + 0.5 * 3 = 1.8132616875..."""
    model = _TableModel(seed=0, reference=False)
    batch, _ = model.batch_with_logprobs([-3.0, -5.0])
    cfg = OfflineDPOConfig(path="unused", beta=0.5, reference_free=True, nll_coef=0.5)
    loss, metrics = micro_batch_loss(model, batch, cfg, StepCounts(num_tokens=2, num_sequences=2))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)) + 1.5, abs=1e-6)
    assert metrics["nll_chosen_sum"] == pytest.approx(3.0, abs=1e-6)


# ---------------------------------------------------------------- a micro-batch on a bigram model


class _TableModel:
    """A bigram policy (next-token logits = a row of a table) and a fixed reference table."""

    VOCAB = 16

    def __init__(self, seed: int, reference: bool = True):
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(self.VOCAB, self.VOCAB, generator=gen))
        self.ref_table = torch.randn(self.VOCAB, self.VOCAB, generator=gen) if reference else None

    def logits(self, batch):
        return self.table[batch["input_ids"]]

    def reference_logits(self, batch):
        if self.ref_table is None:
            raise AssertionError("a reference-free loss must not ask for the reference")
        return self.ref_table[batch["input_ids"]]

    def batch_with_logprobs(self, sequence_logps: list[float]):
        """One-token responses whose log-probs are the given values (the table is set to make them so)."""
        rows = []
        with torch.no_grad():
            for i, value in enumerate(sequence_logps):
                prompt, token = i + 1, 0
                self.table[prompt] = -1e4
                self.table[prompt, token] = 0.0
                self.table[prompt, token + 1] = math.log(math.expm1(-value))  # p(token) = e^value
                rows.append(sequence_row([prompt], [token], 8))
        return pad_pair_rows(rows, 0), sequence_logps


def _rows(n_pairs: int, fillers: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_pairs):
        prompt = torch.randint(1, 16, (3,), generator=gen).tolist()
        for _ in range(2):
            response = torch.randint(1, 16, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen).tolist()
            rows.append(sequence_row(prompt, response, 16))
    for _ in range(fillers):
        rows += filler_pair([1, 2, 3])
    return rows


def _step(model, rows, micro, cfg):
    """Loss and table gradient of one step over `rows` split into micro-batches of `micro` rows."""
    batches = [pad_pair_rows(rows[i : i + micro], 0) for i in range(0, len(rows), micro)]
    counts = [count_pair_rows(b) for b in batches]
    step = StepCounts(sum(c[0] for c in counts), sum(c[1] for c in counts))
    model.table.grad = None
    total, sums = 0.0, {}
    for batch in batches:
        loss, metrics = micro_batch_loss(model, batch, cfg, step)
        loss.backward()
        total += loss.item()
        sums = {k: sums.get(k, 0.0) + v for k, v in metrics.items()}
    return total, model.table.grad.clone(), sums


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "ipo_length_normalised"])
def test_loss_and_gradient_do_not_depend_on_micro_batching(loss_type):
    """4 real pairs and 2 filler pairs as one micro-batch of 12 rows, or 6 micro-batches of 2: the
    same loss (the mean over the 4 real pairs only) and the same gradient."""
    cfg = OfflineDPOConfig(path="unused", beta=0.2, loss_type=loss_type, nll_coef=0.3,
                           label_smoothing=0.1 * (loss_type == "sigmoid"))
    model, rows = _TableModel(seed=1), _rows(4, fillers=2)
    whole, grad, sums = _step(model, rows, 12, cfg)
    split, split_grad, split_sums = _step(model, rows, 2, cfg)
    assert split == pytest.approx(whole, rel=1e-6) and sums == pytest.approx(split_sums, rel=1e-6)
    torch.testing.assert_close(split_grad, grad)
    assert sums["pairs"] == 4.0
    only_real, _, _ = _step(model, rows[:8], 8, cfg)
    assert whole == pytest.approx(only_real, rel=1e-6), "filler pairs must neither add loss nor count as pairs"


def test_logged_implicit_rewards_accuracy_and_margin():
    """Pairs with (r_w, r_l) = (1, -1), (0, 2), (3, 1): chosen mean 4/3, rejected 2/3, margin 2/3,
    accuracy 2/3 (r_w > r_l in pairs 1 and 3)."""
    sums = {"pairs": 3.0, "reward_chosen_sum": 4.0, "reward_rejected_sum": 2.0, "reward_correct_pairs": 2.0,
            "logp_chosen_sum": -3.0, "logp_rejected_sum": -6.0, "nll_chosen_sum": 1.5}
    out = log_metrics(sums, steps=1)
    assert out["train/reward_margin"] == pytest.approx(2 / 3) and out["train/reward_accuracy"] == pytest.approx(2 / 3)
    assert out["train/reward_chosen"] == pytest.approx(4 / 3) and out["train/logp_rejected"] == -2.0
    assert out["train/nll_chosen"] == 0.5


# ---------------------------------------------------------------- online pairing


def test_best_worst_and_correct_incorrect_pairing():
    assert best_worst([0.5, 1.0, 0.0, 1.0]) == [(1, 2)]
    assert best_worst([1.0, 1.0]) == []
    # 2 correct x 3 incorrect, capped at 4: diagonals of the grid spread the responses out.
    assert correct_incorrect([True, False, True, False, False], cap=4) == [(0, 1), (2, 3), (0, 3), (2, 4)]
    assert correct_incorrect([True, True, False], cap=4) == [(0, 2), (1, 2)]
    assert correct_incorrect([False, False], cap=4) == []


def _rollouts(rewards_per_group: list[list[float]]) -> list[Rollout]:
    ex = Example("Q: 1+1\n", None, "2")
    out = []
    for group, rewards in enumerate(rewards_per_group):
        for j, reward in enumerate(rewards):
            out.append(Rollout(ex, group, [1, 2], [10 + j, 3], [-1.0, -1.0], "", 0,
                               score=Score(reward=reward, correct=reward >= 1.0)))
    return out


@pytest.mark.parametrize("pairing, expected_pairs", [("best_worst", 1), ("correct_incorrect", 2)])
def test_online_rows_keep_pairs_adjacent_and_fill_groups_without_preference(pairing, expected_pairs):
    """Group 0 has rewards [0, 1, 1, 0] (a preference), group 1 [1, 1, 1, 1] (none): 2 slots per group,
    so 8 rows; group 1 becomes 2 filler pairs."""
    cfg = DPOConfig(group_size=4, pairing=pairing)
    rows, stats = rollout_pair_rows(_rollouts([[0.0, 1.0, 1.0, 0.0], [1.0] * 4]), RowContext(None, False, 64, cfg))
    assert len(rows) == 8 and [r["weight"] for r in rows[4:]] == [0.0] * 4
    assert stats == {"rollout/pairs_per_prompt": expected_pairs / 2, "rollout/prompts_with_pairs": 0.5}
    chosen, rejected = rows[0], rows[1]
    assert chosen["input_ids"] == [1, 2, 11, 3] and rejected["input_ids"] == [1, 2, 10, 3]
    assert chosen["labels"] == [IGNORE_INDEX, IGNORE_INDEX, 11, 3]
    if expected_pairs == 1:
        assert [r["weight"] for r in rows[:4]] == [1.0, 1.0, 0.0, 0.0]
    assert all(lbl == IGNORE_INDEX for r in rows[4:] for lbl in r["labels"])


@pytest.mark.parametrize("algorithm, train, message", [
    ({"name": "dpo", "group_size": 4}, {"micro_batch_size": 3, "batch_size": 6}, "must be even"),
    ({"name": "dpo", "group_size": 3}, {}, "group_size=3 must be even"),
    ({"name": "dpo", "group_size": 4, "pairing": "correct_incorrect", "max_pairs_per_group": 3}, {}, "exceeds the 2"),
    ({"name": "dpo", "group_size": 16}, {}, "not a multiple of algorithm.group_size=16"),
])
def test_online_config_checks(tmp_path, algorithm, train, message):
    cfg = tiny_config(tmp_path, algorithm=algorithm, peft={"method": "lora"}, train=train)
    with pytest.raises(ValueError, match=message):
        ALGORITHMS["dpo"].validate(cfg)


def test_option_combinations_that_mean_nothing_are_config_errors():
    with pytest.raises(ValidationError, match="label_smoothing .* applies to loss_type=sigmoid"):
        DPOConfig(loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValidationError, match="max_pairs_per_group applies to pairing=correct_incorrect"):
        DPOConfig(max_pairs_per_group=2)


def test_sampled_pairs_take_a_correct_and_a_wrong_completion_of_the_same_prompt():
    import random

    from rlft.make_pairs import preference_rows

    examples = [Example("Q: 1+1\n", None, "2"), Example("Q: 2+2\n", None, "4")]
    completions = [["A: 2", "A: 3", "A: 2"], ["A: 4", "A: 4", "A: 4"]]  # the second prompt has no wrong sample
    rows = preference_rows(examples, completions, lambda ex, text: float(text == f"A: {ex.answer}"), random.Random(0))
    assert rows == [{"prompt": "Q: 1+1\n", "chosen": "A: 2", "rejected": "A: 3"}]


# ---------------------------------------------------------------- through the controller


def write_pairs(path, n: int = 32, bad_line: int | None = None):
    """Pairs from arith train problems: the worked trace vs the same trace with the answer off by one."""
    task = ArithTask(ArithConfig(train_size=n, eval_size=16))
    lines = []
    for i, ex in enumerate(task.split("train")):
        row = {"prompt": ex.prompt, "chosen": ex.response, "rejected": ex.response.replace(
            f"A: {ex.answer}", f"A: {int(ex.answer) + 1}")}
        if i + 1 == bad_line:
            del row["rejected"]
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def _offline(tmp_path, name, **over):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    sections = dict(algorithm={"name": "dpo_offline", "path": str(pairs), "beta": 0.5},
                    peft={"method": "full"},
                    train={"batch_size": 8, "micro_batch_size": 2, "lr": 1e-3, "grad_clip": 0.0})
    for key, values in over.items():
        sections[key] = {**sections.get(key, {}), **values}
    return tiny_config(tmp_path, name, **sections)


def test_bad_pairs_row_names_file_and_line_before_any_role_starts(tmp_path):
    cfg = _offline(tmp_path, "bad")
    write_pairs(tmp_path / "pairs.jsonl", bad_line=3)
    ctl = Controller(cfg, show_progress=False)
    with pytest.raises(ValueError, match=r"pairs.jsonl:3: missing key 'rejected'"):
        ctl.setup()
    assert ctl.learners is None and not (tmp_path / "runs" / "bad").exists()


def test_offline_run_with_full_fine_tuning_keeps_the_original_model_as_reference(tmp_path):
    """Offline DPO, full fine-tuning: the frozen copy scores a probe exactly as the original model
    before and after training while the policy moves; the run logs the DPO metrics."""
    cfg = _offline(tmp_path, "offline", train={"steps": 3, "lr": 1e-2, "micro_batch_size": 4}, eval={"num_examples": 4})
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        probe = held_out_probe(ctl)
        before = ctl.learners.call_one(0, "token_logprobs", probe, reference=True)
        summary = ctl.loop()
        after = ctl.learners.call_one(0, "token_logprobs", probe, reference=True)
        policy = ctl.learners.call_one(0, "token_logprobs", probe)
    finally:
        ctl.close()
    original = original_model_logprobs(cfg, probe)
    torch.testing.assert_close(before, original, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(after, original, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(policy, original, atol=1e-3), "training should have moved the policy"
    rows = [json.loads(line) for line in (tmp_path / "runs" / "offline" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in trained] == [1, 2, 3] and summary["eval/accuracy"] is not None
    assert trained[0]["train/loss"] == pytest.approx(LOG2, abs=1e-6), "pi = pi_ref at the first step"
    assert trained[0]["train/pairs"] == 4.0 and trained[-1]["train/reward_margin"] > 0
    for key in ("train/reward_chosen", "train/reward_rejected", "train/reward_accuracy", "train/logp_chosen",
                "train/logp_rejected", "train/epoch", "train/grad_norm"):
        assert key in trained[-1], key


def test_dpo_update_two_ranks_equal_one_rank(tmp_path):
    """Two optimizer steps of offline DPO (full fine-tuning, frozen reference copy on each rank): the
    first at pi = pi_ref (loss log 2), the second off it; 1 rank x 4 micro-batches of 2 rows equals 2
    ranks x 2 micro-batches in loss, metric sums, gradient norm and weights."""
    one, one_state = two_source_steps(_offline(tmp_path, "one"))
    two, two_state = two_source_steps(_offline(tmp_path, "two", runtime={"mode": "local"}, learner={"count": 2}))
    assert one[0]["loss"] == pytest.approx(LOG2, abs=1e-6) and one[1]["loss"] != pytest.approx(LOG2, abs=1e-4)
    for a, b in zip(one, two):
        for key in ("loss", "pairs", "reward_chosen_sum", "reward_rejected_sum", "logp_chosen_sum", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    for name in one_state:
        torch.testing.assert_close(two_state[name], one_state[name], atol=1e-5, rtol=1e-4)


class ParityConfig(ComponentConfig):
    name: Literal["first_token_parity"] = "first_token_parity"


def _first_token_parity(cfg, task):
    return lambda rollout: ComponentValue(float(rollout.completion_ids[0] % 2))


@pytest.fixture
def parity_reward():
    """A reward an untrained model's samples differ in (the answer checker gives them all 0)."""
    spec = ComponentSpec("first_token_parity", ParityConfig, _first_token_parity)
    REWARD_COMPONENTS.register("first_token_parity", spec, replace=True)
    yield
    REWARD_COMPONENTS.unregister("first_token_parity")


def test_online_dpo_run_end_to_end(tmp_path, parity_reward):
    """Online DPO with LoRA: 1 vLLM generator samples 4 responses per prompt, the reward role scores
    them, best vs worst pairs train, and the adapter is synced and verified after each of 2 iterations;
    the second batch is generated while the first trains (one step off-policy)."""
    cfg = tiny_config(
        tmp_path, "online", algorithm={"name": "dpo", "group_size": 4, "beta": 0.5}, peft={"method": "lora", "r": 4},
        generator={"count": 1, "kv_cache_mb": 64}, rollout={"max_new_tokens": 24, "max_staleness": 1},
        reward={"components": [{"name": "answer"}, {"name": "first_token_parity"}]},
        train={"steps": 2, "batch_size": 8, "micro_batch_size": 4, "lr": 1e-2})
    summary = train(cfg, show_progress=False)
    assert summary["policy_version"] == 2
    rows = [json.loads(line) for line in (tmp_path / "runs" / "online" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in trained] == [1, 2]
    assert [r["rollout/staleness"] for r in trained] == [0.0, 1.0]
    for key in ("rollout/pairs_per_prompt", "rollout/prompts_with_pairs", "reward/mean", "train/reward_accuracy",
                "train/reward_margin", "train/pairs", "sync/version", "sync/parity_max_abs_diff"):
        assert key in trained[-1], key
    assert max(r.get("sync/parity_max_abs_diff", 0.0) for r in rows) < 1e-3
    assert "eval/accuracy" in rows[-1]
    assert sum(r["rollout/pairs_per_prompt"] for r in trained) > 0, "the parity reward should give pairs"
