"""The rollout/training mismatch (rlft.ops.mismatch; GPPO's `old_logprobs: learner`): golden
behaviour weights, how they enter the loss, the learners' recomputed log-probs against a sampler
in float32 and against a sampler with perturbed weights, and 1 vs 2 learner ranks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError

from rlft.algorithms import ALGORITHMS
from rlft.algorithms.base import StepCounts, count_label_tokens
from rlft.algorithms.gppo import METRIC_KEYS, GPPOConfig, log_metrics, micro_batch_loss
from rlft.algorithms.gppo_episodes import GPPOEpisodesConfig
from rlft.algorithms.gppo_episodes import micro_batch_loss as episode_loss
from rlft.config import ConfigError
from rlft.control import Controller
from rlft.data.collate import encode_prompt
from rlft.ops.logprobs import IGNORE_INDEX, token_logprobs
from rlft.ops.mismatch import MISMATCH_KEYS, behaviour_weights, mismatch_metrics, mismatch_sums
from rlft.types import Rollout, Score
from tests.helpers import (LEARNER_ONLY_GPPO, Bigram, assert_micro_batches_sum_to_full_batch, mismatched_batch,
                           rl_config, tiny_config)

LN = math.log

# ---------------------------------------------------------------- golden weights (pure)

# Token level, C = 2. pi_sampler = [0.8, 0.5, 0.4, 0.1], pi_prox = [0.2, 0.4, 0.6, 0.3], so
# w = pi_prox / pi_sampler = [1/4, 4/5, 3/2, 3]:
#   tis: min(w, 2)                  = [0.25, 0.8, 1.5, 2.0]   corrected: only w = 3
#   mis: w inside [1/2, 2], else 0  = [0.0,  0.8, 1.5, 0.0]   corrected: w = 1/4 and w = 3
SAMPLER = torch.tensor([[0.8, 0.5, 0.4, 0.1]]).log()
PROX = torch.tensor([[0.2, 0.4, 0.6, 0.3]]).log()
ONES = torch.ones(1, 4)


@pytest.mark.parametrize("correction, weights, corrected", [
    ("none", [1.0, 1.0, 1.0, 1.0], [0, 0, 0, 0]),
    ("tis", [0.25, 0.8, 1.5, 2.0], [0, 0, 0, 1]),
    ("mis", [0.0, 0.8, 1.5, 0.0], [1, 0, 0, 1]),
])
def test_token_level_weights_golden(correction, weights, corrected):
    w, hit = behaviour_weights(PROX, SAMPLER, ONES, correction, "token", cap=2.0)
    torch.testing.assert_close(w, torch.tensor([weights]))
    assert hit.tolist() == [[bool(c) for c in corrected]]
    assert not w.requires_grad


def test_sequence_level_weights_golden():
    """Sequence level, C = 2: each sequence's w is the geometric mean of its token ratios.

        A: ratios [1/2, 2, 4]       (1/2 * 2 * 4)^(1/3) = 4^(1/3) = 1.587401   inside [1/2, 2]: kept by both
        B: ratios [4, 4, pad]       4                                           tis: 2 (corrected), mis: 0
        C: ratios [1/4, 1/2, pad]   (1/8)^(1/2) = 0.353553                      tis keeps it (caps above only), mis: 0
    The padding position holds garbage log-probs; its w is 1 and it is never counted as corrected."""
    ratios = torch.tensor([[0.5, 2.0, 4.0], [4.0, 4.0, 1.0], [0.25, 0.5, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    sampler = torch.full((3, 3), -1.0)
    prox = torch.where(mask > 0, sampler + ratios.log(), -50.0)  # garbage off the mask
    a, c = 4 ** (1 / 3), 0.125 ** 0.5
    tis, tis_hit = behaviour_weights(prox, sampler, mask, "tis", "sequence", cap=2.0)
    torch.testing.assert_close(tis, torch.tensor([[a, a, a], [2.0, 2.0, 1.0], [c, c, 1.0]]))
    assert tis_hit.tolist() == [[False] * 3, [True, True, False], [False] * 3]
    mis, mis_hit = behaviour_weights(prox, sampler, mask, "mis", "sequence", cap=2.0)
    torch.testing.assert_close(mis, torch.tensor([[a, a, a], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    assert mis_hit.tolist() == [[False] * 3, [True, True, False], [True, True, False]]


def test_mismatch_metrics_golden():
    """The token example under tis, C = 2 (log w = ln[1/4, 4/5, 3/2, 3]):
        k3 = w - 1 - log w = [0.636294, 0.023144, 0.094535, 0.901388]     sum 1.655361, mean 0.413840
        |log w|            = [1.386294, 0.223144, 0.405465, 1.098612]     sum 3.113515, max 1.386294
        applied w          = [0.25, 0.8, 1.5, 2.0]                        sum 4.55, mean 1.1375
        corrected: 1 token of 4, 1 sequence of 1."""
    w, hit = behaviour_weights(PROX, SAMPLER, ONES, "tis", "token", cap=2.0)
    sums = dict(zip(MISMATCH_KEYS, mismatch_sums(PROX, SAMPLER, ONES, w, hit).tolist()))
    expected = {"mismatch_tokens": 4.0, "mismatch_sequences": 1.0, "mismatch_k3_sum": 1.655361,
                "mismatch_abs_sum": 3.113515, "mismatch_abs_max": 1.386294, "weight_sum": 4.55,
                "corrected_tokens": 1.0, "corrected_sequences": 1.0}
    assert sums == pytest.approx(expected, rel=1e-5)
    assert mismatch_metrics(sums) == pytest.approx({
        "mismatch/k3": 0.413840, "mismatch/abs_logprob_diff_mean": 0.778379, "mismatch/abs_logprob_diff_max": 1.386294,
        "mismatch/weight_mean": 1.1375, "mismatch/corrected_token_frac": 0.25, "mismatch/corrected_seq_frac": 1.0,
    }, rel=1e-5)
    assert mismatch_metrics({"tokens": 4.0}) == {}  # sampler mode: nothing to report


# ---------------------------------------------------------------- the weights in the loss


class FixedLogits(torch.nn.Module):
    """A policy whose logits [B, T, V] are the parameter itself: log-probs are set by hand."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.param = torch.nn.Parameter(logits.clone())

    def logits(self, batch):
        return self.param


def _one_sequence_batch(log_w: list[float], advantage: float = 1.0) -> tuple[FixedLogits, dict]:
    """One prompt token and 4 response tokens; pi_prox = pi_theta (ratio 1), pi_sampler = pi_prox / w."""
    policy = FixedLogits(torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(0)))
    labels = torch.tensor([[IGNORE_INDEX, 0, 2, 1, 0]])
    batch = {"input_ids": labels.clamp(min=0), "attention_mask": torch.ones(1, 5, dtype=torch.long), "labels": labels}
    with torch.no_grad():
        prox, mask = token_logprobs(policy.logits(batch), labels)
    batch.update(prox_logprobs=prox, old_logprobs=prox - torch.tensor([log_w]), advantages=advantage * mask,
                 positive=torch.zeros(1))
    return policy, batch


@pytest.mark.parametrize("correction, weights", [("none", [1, 1, 1, 1]), ("tis", [0.25, 0.8, 1.5, 2.0]),
                                                 ("mis", [0.0, 0.8, 1.5, 0.0])])
def test_weights_scale_each_tokens_loss_and_gradient(correction, weights):
    """At pi_theta = pi_prox (ratio 1, nothing clipped) the token loss is -w A, so with A = 1 over 4 tokens:
        none: -(1 + 1 + 1 + 1) / 4 = -1;  tis: -(0.25 + 0.8 + 1.5 + 2) / 4 = -1.1375;  mis: -(0.8 + 1.5) / 4 = -0.575.
    mis keeps its zeroed tokens in the normaliser (4, not 2: veRL's and slime's choice). The gradient is
    that of -sum_t w_t A log pi_t / 4: w is a constant. The ratio is against pi_prox: w = 3 would be far
    outside the clip range against pi_sampler, yet nothing is clipped."""
    policy, batch = _one_sequence_batch([LN(0.25), LN(0.8), LN(1.5), LN(3.0)])
    cfg = GPPOConfig(old_logprobs="learner", correction=correction, correction_cap=2.0)
    loss, metrics = micro_batch_loss(policy, batch, cfg, StepCounts(*count_label_tokens(batch)))
    w = torch.tensor([weights])
    torch.testing.assert_close(loss, -w.sum() / 4)
    (grad,) = torch.autograd.grad(loss, policy.param)
    logprobs, _ = token_logprobs(policy.param, batch["labels"])
    (expected,) = torch.autograd.grad(-(w * logprobs).sum() / 4, policy.param)
    torch.testing.assert_close(grad, expected)
    assert metrics["clip_low_tokens"] == metrics["clip_high_tokens"] == 0.0
    assert metrics["weight_sum"] == pytest.approx(float(w.sum()))


def test_sampler_mode_is_unchanged_and_reports_no_mismatch():
    """old_logprobs: sampler ignores any prox_logprobs and logs no mismatch; learner mode without a
    correction and with pi_prox = pi_sampler gives the same loss and gradient."""
    policy, batch = _one_sequence_batch([0.3, -0.2, 0.1, 0.0])
    counts = StepCounts(*count_label_tokens(batch))
    sampler_loss, sampler_metrics = micro_batch_loss(policy, batch, GPPOConfig(), counts)
    assert not set(MISMATCH_KEYS) & set(sampler_metrics)
    assert not [k for k in log_metrics(sampler_metrics, 1) if k.startswith("mismatch/")]
    same = {**batch, "prox_logprobs": batch["old_logprobs"]}
    learner_loss, learner_metrics = micro_batch_loss(policy, same, GPPOConfig(old_logprobs="learner"), counts)
    assert learner_loss.item() == sampler_loss.item()
    assert learner_metrics["mismatch_abs_max"] == 0.0 and learner_metrics["weight_sum"] == 4.0
    (got,), (want,) = torch.autograd.grad(learner_loss, policy.param), torch.autograd.grad(sampler_loss, policy.param)
    assert torch.equal(got, want)
    with pytest.raises(KeyError, match="no prox_logprobs"):
        micro_batch_loss(policy, {k: v for k, v in batch.items() if k != "prox_logprobs"},
                         GPPOConfig(old_logprobs="learner"), counts)


def _mismatched_batch(model: Bigram, per_token_advantages: bool) -> dict[str, torch.Tensor]:
    """4 sequences of 7 tokens (2 prompt tokens; responses of 5, 3, 4, 2); pi_prox and pi_sampler are
    pi_theta moved by independent noise (the sampler also by a shift per sequence), so the ratio clips
    and the weights are truncated or masked at token and at sequence level."""
    return mismatched_batch(model, per_token_advantages, prox_noise=0.4,
                            sampler_shift=torch.tensor([[0.9], [-0.1], [0.0], [-0.9]]))


@pytest.mark.parametrize("cfg, per_token", [
    (GPPOConfig(old_logprobs="learner", correction="tis", beta1=0.5, aux_nll_coef=0.1), False),
    (GPPOConfig(old_logprobs="learner", correction="mis", correction_level="sequence", clip_mode="ppo",
                eps_high=0.2, reduction="seq-mean-token-mean"), False),
    (GPPOConfig(old_logprobs="learner", correction="mis", clip_mode="ppo"), False),
    (GPPOConfig(old_logprobs="learner", correction="tis", correction_level="sequence", scale_by_std=False,
                reduction="seq-mean-token-sum-norm", max_len=5), False),
    (GPPOConfig(old_logprobs="learner", correction="mis", correction_cap=1.5), True),
], ids=["gppo-tis", "grpo-mis-seq", "dapo-mis", "drgrpo-tis-seq", "process-mis"])
def test_micro_batch_split_equals_full_batch(cfg, per_token):
    """Step-global normalisers, per-sequence weights: micro-batches [0:1] + [1:4] give the full batch's
    loss, gradients and metric sums (the max by max), for every variant of the family."""
    model = Bigram()
    batch = _mismatched_batch(model, per_token)
    _, m_full = assert_micro_batches_sum_to_full_batch(model, batch, cfg, METRIC_KEYS + MISMATCH_KEYS)
    assert 0 < m_full["corrected_tokens"] < m_full["tokens"], "the noise should make the correction act"


def test_episode_observations_and_gold_answers_carry_no_weight_or_metric():
    """An episode [prompt | t1 t2 | o1 o2 | t3 | gold]: observations are unlabelled, the gold answer token
    was written, not sampled. Only t1, t2, t3 count: log w = [ln 2, 0, -ln 2] -> geometric mean 1, so mis
    (sequence, C = 2) keeps w = 1 on all three; k3 = (2 - 1 - ln 2) + 0 + (1/2 - 1 + ln 2) = 0.5. Were the
    gold token counted (log pi_prox = -6 against the 0 its row holds), the mean log w would be -1.5 and
    mis would drop the sequence."""
    logits = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(2))
    logits[0, 5] = torch.tensor([6.0, 0.0, 0.0, 0.0])  # position 5 predicts the gold token 2: log pi ~ -6
    policy = FixedLogits(logits)
    labels = torch.tensor([[IGNORE_INDEX, 1, 3, IGNORE_INDEX, IGNORE_INDEX, 0, 2]])
    batch = {"input_ids": labels.clamp(min=0), "attention_mask": torch.ones(1, 7, dtype=torch.long), "labels": labels}
    with torch.no_grad():
        prox, mask = token_logprobs(policy.logits(batch), labels)
    assert prox[0, 5] < -5.5
    observed = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]])
    batch.update(
        prox_logprobs=prox + observed * 40.0,  # garbage on the observations
        old_logprobs=prox - torch.tensor([[LN(2), 0.0, 0.0, 0.0, -LN(2), 0.0]]) - observed * 30.0,
        answer_sft=torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]),
        advantages=torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]]), positive=torch.zeros(1))
    batch["old_logprobs"][0, 5] = 0.0  # what with_gold_answer writes for a gold token
    cfg = GPPOEpisodesConfig(old_logprobs="learner", correction="mis", correction_level="sequence", correction_cap=2.0)
    _, metrics = episode_loss(policy, batch, cfg, StepCounts(*count_label_tokens(batch)))
    assert metrics["mismatch_tokens"] == 3.0 and metrics["corrected_tokens"] == 0.0
    assert metrics["weight_sum"] == pytest.approx(3.0)
    assert metrics["mismatch_k3_sum"] == pytest.approx(0.5, rel=1e-5)
    assert metrics["mismatch_abs_max"] == pytest.approx(LN(2), rel=1e-5)
    assert metrics["pg_loss_sum"] == pytest.approx(-3.0, rel=1e-5)  # ratio 1, A = 1, w = 1 on t1, t2, t3


# ---------------------------------------------------------------- configuration


def test_config_defaults_and_refusals(tmp_path):
    cfg = GPPOConfig()
    defaults = (cfg.old_logprobs, cfg.correction, cfg.correction_level, cfg.correction_cap)
    assert defaults == ("sampler", "none", "token", 2.0)
    refused = [
        ({"correction": "tis"}, r"algorithm.correction=tis needs algorithm.old_logprobs=learner"),
        ({"old_logprobs": "learner", "correction_cap": 1.0},
         r"key 'algorithm.correction_cap': Input should be greater than 1"),
        ({"old_logprobs": "learner", "correction": "is"},
         r"key 'algorithm.correction': Input should be 'none', 'tis' or 'mis'"),
        ({"old_logprobs": "vllm"}, r"key 'algorithm.old_logprobs'"),
        ({"old_logprobs": "learner", "correction_level": "turn"}, r"key 'algorithm.correction_level'"),
    ]
    for values, message in refused:
        with pytest.raises(ConfigError, match=message):
            tiny_config(tmp_path, algorithm={"name": "gppo", **values})
    with pytest.raises(ValidationError, match="algorithm.correction=mis needs algorithm.old_logprobs=learner"):
        GPPOEpisodesConfig(correction="mis")


# ---------------------------------------------------------------- real learners

LEARNER_MODE = dict(algorithm={"name": LEARNER_ONLY_GPPO.name, "group_size": 4, "old_logprobs": "learner",
                               "correction": "mis", "correction_cap": 1.2},
                    rollout={"max_new_tokens": 24, "mini_batches": 2}, train={"lr": 1e-2, "grad_clip": 0.0})


@pytest.fixture(scope="module")
def registered():
    ALGORITHMS.register(LEARNER_ONLY_GPPO.name, LEARNER_ONLY_GPPO, replace=True)
    yield
    ALGORITHMS.unregister(LEARNER_ONLY_GPPO.name)


@pytest.fixture(scope="module")
def learner(tmp_path_factory, registered, one_torch_thread):
    """One inline learner rank (float32, LoRA at version 0: the base model) that only scores rows here."""
    ctl = Controller(rl_config(tmp_path_factory.mktemp("mismatch"), "prox", **LEARNER_MODE), show_progress=False)
    ctl.setup()
    yield ctl
    ctl.close()


@pytest.fixture(scope="module")
def base(learner):
    from transformers import AutoModelForCausalLM

    from rlft.data.models import resolve_model

    return AutoModelForCausalLM.from_pretrained(resolve_model(learner.cfg.model)).eval()


def perturbed_copy(model, scale: float = 0.5, seed: int = 0):
    """Every weight moved by Gaussian noise of `scale` times its tensor's std."""
    copied = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copied.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return copied


def sample_rollouts(sampler, ctl, prompts: int = 4, group: int = 4, max_new: int = 12) -> list[Rollout]:
    """What a generator returns: `group` completions per prompt sampled from `sampler` at T = 1, with the
    log-probs it sampled them with. Rewards alternate 1, 0 in each group: every advantage is non-zero."""
    gen = torch.Generator().manual_seed(3)
    rollouts = []
    for i, ex in enumerate(ctl.train_examples[:prompts]):
        prompt = encode_prompt(ctl.tokenizer, ex.prompt, False)
        for k in range(group):
            completion, logprobs = [], []
            with torch.no_grad():
                for _ in range(max_new):
                    logp = torch.log_softmax(sampler(torch.tensor([prompt + completion])).logits[0, -1].float(), -1)
                    token = int(torch.multinomial(logp.exp(), 1, generator=gen))
                    completion.append(token)
                    logprobs.append(float(logp[token]))
                    if token == ctl.tokenizer.eos_token_id:
                        break
            rollouts.append(Rollout(ex, i, prompt, completion, logprobs, "", 0,
                                    score=Score(reward=float(k % 2), correct=False)))
    return rollouts


def completion_logprobs(model, rollout: Rollout) -> torch.Tensor:
    """log pi(y_t) of the rollout's completion tokens under `model`, scored on their own (no padding)."""
    with torch.no_grad():
        logits = model(torch.tensor([rollout.prompt_ids + rollout.completion_ids])).logits[0].float()
    logp = torch.log_softmax(logits[len(rollout.prompt_ids) - 1:-1], -1)
    return logp.gather(-1, torch.tensor(rollout.completion_ids).unsqueeze(-1)).squeeze(-1)


def learner_prox(rows: list[dict], rollouts: list[Rollout]) -> list[torch.Tensor]:
    """Each row's recomputed log-probs at its completion positions."""
    return [torch.tensor(row["prox_logprobs"][len(r.prompt_ids) - 1:]) for row, r in zip(rows, rollouts)]


class HFPolicy:
    """The PolicyModel view of a transformers causal LM (pi_theta for the loss, no DeepSpeed)."""

    def __init__(self, model):
        self.model = model

    def logits(self, batch):
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_float32_learner_logprobs_equal_the_samplers(learner, base):
    """A sampler that is the policy itself, in float32: the learner's recomputed log-probs equal the
    sampling log-probs up to float noise, so w = 1: no token corrected, k3 ~ 0."""
    rollouts = sample_rollouts(base, learner, prompts=2)
    rows = learner.proximal_rows(learner.spec.build_rows(rollouts, learner.row_ctx)[0])
    for prox, r in zip(learner_prox(rows, rollouts), rollouts):
        torch.testing.assert_close(prox, torch.tensor(r.logprobs), atol=1e-5, rtol=0)
    batch = learner.spec.pad(rows, learner.pad_id())
    _, metrics = micro_batch_loss(HFPolicy(base), batch, learner.cfg.algorithm, StepCounts(*count_label_tokens(batch)))
    assert metrics["mismatch_tokens"] > 20 and metrics["corrected_tokens"] == 0.0
    assert metrics["mismatch_abs_max"] < 1e-5
    assert metrics["weight_sum"] / metrics["mismatch_tokens"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["mismatch_k3_sum"] / metrics["mismatch_tokens"] < 1e-9


@pytest.fixture(scope="module")
def perturbed_rollouts(learner, base) -> list[Rollout]:
    """16 rollouts (4 prompts x 4) sampled from a perturbed copy of the policy."""
    return sample_rollouts(perturbed_copy(base), learner)


def _expected_sums(log_w: list[torch.Tensor], advantages: list[float], correction: str, level: str, cap: float) -> dict:
    """The metric sums and the policy-gradient sum -sum_t w_t A at ratio 1, from the definitions in
    plain Python (token: w_t = exp(log w_t); sequence: every token gets exp(mean_t log w_t); tis: min(w, C);
    mis: 0 outside [1/C, C])."""
    out = dict.fromkeys(("weight_sum", "corrected_tokens", "corrected_sequences", "pg_loss_sum", "mismatch_k3_sum",
                         "mismatch_abs_sum"), 0.0)
    for lw, a in zip(log_w, advantages):
        raw = [math.exp(x) for x in lw.tolist()]
        if level == "sequence":
            raw = [math.exp(sum(lw.tolist()) / len(raw))] * len(raw)
        if correction == "tis":
            w, hit = [min(x, cap) for x in raw], [x > cap for x in raw]
        else:
            hit = [not (1 / cap <= x <= cap) for x in raw]
            w = [0.0 if h else x for x, h in zip(raw, hit)]
        out["weight_sum"] += sum(w)
        out["corrected_tokens"] += sum(hit)
        out["corrected_sequences"] += any(hit)
        out["pg_loss_sum"] += -a * sum(w)
        out["mismatch_k3_sum"] += sum(math.exp(x) - 1 - x for x in lw.tolist())
        out["mismatch_abs_sum"] += sum(abs(x) for x in lw.tolist())
    return out


@pytest.mark.parametrize("correction, level", [("tis", "token"), ("mis", "token"), ("tis", "sequence"),
                                               ("mis", "sequence")])
def test_perturbed_sampler_is_measured_and_corrected(learner, base, perturbed_rollouts, correction, level):
    """A generator sampling from perturbed weights: the learner's recomputed log-probs are the policy's own
    (checked against a plain forward of the base model), the mismatch metrics are those of
    log w = log pi_policy - log pi_perturbed, and the loss at ratio 1 is -sum_t w_t A / N with the weights
    derived in `_expected_sums`."""
    rollouts = perturbed_rollouts
    rows = learner.proximal_rows(learner.spec.build_rows(rollouts, learner.row_ctx)[0])
    policy_logprobs = [completion_logprobs(base, r) for r in rollouts]
    for prox, expected in zip(learner_prox(rows, rollouts), policy_logprobs):
        torch.testing.assert_close(prox, expected, atol=1e-5, rtol=0)
    log_w = [p - torch.tensor(r.logprobs) for p, r in zip(policy_logprobs, rollouts)]
    advantages = [row["advantages"][len(r.prompt_ids) - 1] for row, r in zip(rows, rollouts)]
    cap = 1.2
    expected = _expected_sums(log_w, advantages, correction, level, cap)
    batch = learner.spec.pad(rows, learner.pad_id())
    counts = StepCounts(*count_label_tokens(batch))
    cfg = GPPOConfig(old_logprobs="learner", correction=correction, correction_level=level, correction_cap=cap)
    loss, metrics = micro_batch_loss(HFPolicy(base), batch, cfg, counts)
    tokens = sum(len(r.completion_ids) for r in rollouts)
    assert metrics["mismatch_tokens"] == tokens and metrics["mismatch_sequences"] == len(rollouts)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    assert metrics["mismatch_abs_max"] == pytest.approx(max(float(x.abs().max()) for x in log_w), rel=1e-4)
    assert loss.item() == pytest.approx(expected["pg_loss_sum"] / tokens, rel=1e-4, abs=1e-6)
    if level == "token":  # the perturbation is big enough for the correction to act, and not on everything
        assert 0.05 < expected["corrected_tokens"] / tokens < 0.9


def test_learner_mode_two_ranks_equal_one_rank(tmp_path, learner, perturbed_rollouts):
    """rollout.mini_batches 2: both mini-batches are scored before the first optimizer step (pi_prox is
    the weights before the batch's passes). 2 ranks (Ray, gloo) == 1 rank: loss, metric sums (the max by
    max), gradient norm and weights."""
    rows = learner.spec.build_rows(perturbed_rollouts, learner.row_ctx)[0]

    def run(calls=None, **over):
        ctl = Controller(rl_config(tmp_path, f"ranks{len(over)}", **{**LEARNER_MODE, **over}), show_progress=False)
        ctl.setup()
        try:
            if calls is not None:  # inline: record the order of the learner's calls
                rank = ctl.learners.members[0]
                for name in ("proximal_logprobs", "train_step"):
                    method = getattr(rank, name)
                    setattr(rank, name, lambda *a, _m=method, _n=name: calls.append(_n) or _m(*a))
            out, _ = ctl.optimize(rows)
            return out, ctl.learners.call_one(0, "trainable_state")
        finally:
            ctl.close()

    calls: list[str] = []
    one_out, one_state = run(calls)
    assert calls == ["proximal_logprobs", "proximal_logprobs", "train_step", "train_step"]
    two_out, two_state = run(learner={"count": 2}, runtime={"mode": "local"})
    assert one_out["corrected_tokens"] > 0
    assert one_out["mismatch_tokens"] == sum(len(r.completion_ids) for r in perturbed_rollouts)
    for key in ("loss", "pg_loss_sum", "clip_low_tokens", "clip_high_tokens", "grad_norm", *MISMATCH_KEYS):
        assert two_out[key] == pytest.approx(one_out[key], rel=1e-4, abs=1e-7), key
    for name in one_state:
        torch.testing.assert_close(two_state[name], one_state[name], atol=1e-5, rtol=1e-4)
