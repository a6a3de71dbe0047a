"""PPO with a critic: GAE (rlft/ops/gae.py), the clipped value loss (rlft/ops/value_loss.py), whitening, the
rows the critic's values turn into (rlft/algorithms/ppo.py), its config checks, and one end-to-end run.

Golden values by hand. One response of 3 tokens with the reward r on its last token and critic values
V = (V_0, V_1, V_2), V_3 = 0 after the end:
    delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lambda A_{t+1},   R_t = A_t + V_t

(a) r = 1, gamma = 0.5, lambda = 1, V = (0.2, 0.4, 0.6):
    delta = (0 + 0.5*0.4 - 0.2, 0 + 0.5*0.6 - 0.4, 1 + 0 - 0.6) = (0.0, -0.1, 0.4)
    A_2 = 0.4;  A_1 = -0.1 + 0.5*0.4 = 0.1;  A_0 = 0.0 + 0.5*0.1 = 0.05
    discounted returns G_t = 0.5^(2-t) * 1 = (0.25, 0.5, 1.0), and G - V = (0.05, 0.1, 0.4) = A;  R = G.
(b) the same with lambda = 0: A = delta = (0.0, -0.1, 0.4);  R = A + V = (0.2, 0.3, 1.0).
(c) r = 2, gamma = lambda = 1, V = (0.5, -1, 3): every A_t telescopes to r - V_t = (1.5, 3, -1); R = (2, 2, 2).

Clipped value loss, eps = 0.2, V_old = 1, R = 2:
    V = 1.1: inside [0.8, 1.2], both terms (2 - 1.1)^2 = 0.81 -> 0.405, not clipped, dL/dV = V - R = -0.9
    V = 1.5: clip -> 1.2; unclipped 0.25, clipped 0.64 -> 0.32, clipped, dL/dV = 0 (the clamp is flat)
    V = 0.5: clip -> 0.8; unclipped 2.25, clipped 1.44 -> 1.125, not clipped, dL/dV = -1.5
    eps = None: 0.5 (V - R)^2 = 0.405, 0.125, 1.125
Whitening (1, 2, 3) on the mask (100 off it): mean 2, population std sqrt(2/3) -> (-1.2247449, 0, 1.2247449), 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlft.algorithms.base import RowContext, StepCounts
from rlft.algorithms.ppo import PPOConfig, build_rows, gae_rows, pad_ppo_rows, value_log_metrics, value_loss
from rlft.ops.gae import explained_variance, gae, terminal_rewards, whiten
from rlft.ops.logprobs import IGNORE_INDEX
from rlft.ops.value_loss import clipped_value_loss
from rlft.types import Example, Rollout, Score
from tests.helpers import assert_micro_batches_sum_to_full_batch, rl_config, tiny_config, write_tiny_sft_recipe

D = torch.float64


def one_response(values, reward):
    """Row layout [prompt, t0, t1, t2, pad]: the mask is 1 on the 3 response positions."""
    mask = torch.tensor([[0, 1, 1, 1, 0]], dtype=D)
    v = torch.tensor([[9.0, *values, 9.0]], dtype=D)  # off-mask values must not matter
    return terminal_rewards(torch.tensor([reward], dtype=D), mask), v, mask


@pytest.mark.parametrize("values, reward, gamma, lam, want_a, want_r", [
    ((0.2, 0.4, 0.6), 1.0, 0.5, 1.0, (0.05, 0.1, 0.4), (0.25, 0.5, 1.0)),   # (a)
    ((0.2, 0.4, 0.6), 1.0, 0.5, 0.0, (0.0, -0.1, 0.4), (0.2, 0.3, 1.0)),    # (b)
    ((0.5, -1.0, 3.0), 2.0, 1.0, 1.0, (1.5, 3.0, -1.0), (2.0, 2.0, 2.0)),   # (c)
])
def test_gae_golden_values(values, reward, gamma, lam, want_a, want_r):
    rewards, v, mask = one_response(values, reward)
    assert rewards.tolist() == [[0.0, 0.0, 0.0, reward, 0.0]]
    advantages, returns = gae(rewards, v, mask, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, *want_a, 0.0]], dtype=D), atol=1e-12, rtol=0)
    torch.testing.assert_close(returns, torch.tensor([[0.0, *want_r, 0.0]], dtype=D), atol=1e-12, rtol=0)


def test_gae_lambda_one_is_discounted_return_minus_value_and_lambda_zero_is_td():
    """Random per-token rewards and values, rows of different lengths after a prompt: lambda = 1 gives
    sum_k gamma^k r_{t+k} - V_t; lambda = 0 gives r_t + gamma V_{t+1} - V_t (V after the end 0)."""
    gen = torch.Generator().manual_seed(0)
    gamma, lengths, width = 0.9, [4, 2, 6], 9
    mask = torch.zeros(3, width, dtype=D)
    for row, n in enumerate(lengths):
        mask[row, 2:2 + n] = 1.0
    rewards = torch.randn(3, width, generator=gen, dtype=D) * mask
    values = torch.randn(3, width, generator=gen, dtype=D)
    full, _ = gae(rewards, values, mask, gamma, 1.0)
    td, _ = gae(rewards, values, mask, gamma, 0.0)
    for row, n in enumerate(lengths):
        for t in range(2, 2 + n):
            discounted = sum(gamma ** (k - t) * rewards[row, k] for k in range(t, 2 + n))
            assert full[row, t].item() == pytest.approx((discounted - values[row, t]).item(), abs=1e-12)
            next_value = values[row, t + 1] if t + 1 < 2 + n else 0.0
            assert td[row, t].item() == pytest.approx((rewards[row, t] + gamma * next_value - values[row, t]).item(),
                                                      abs=1e-12)
    assert (full * (1 - mask)).abs().sum() == 0 and (td * (1 - mask)).abs().sum() == 0


def test_clipped_value_loss_cases_and_gradients():
    v = torch.tensor([1.1, 1.5, 0.5], dtype=D, requires_grad=True)
    old, ret = torch.ones(3, dtype=D), torch.full((3,), 2.0, dtype=D)
    loss, clipped = clipped_value_loss(v, old, ret, 0.2)
    torch.testing.assert_close(loss, torch.tensor([0.405, 0.32, 1.125], dtype=D), atol=1e-12, rtol=0)
    assert clipped.tolist() == [0.0, 1.0, 0.0]
    (grad,) = torch.autograd.grad(loss.sum(), v)
    torch.testing.assert_close(grad, torch.tensor([-0.9, 0.0, -1.5], dtype=D), atol=1e-12, rtol=0)
    plain, none_clipped = clipped_value_loss(v, old, ret, None)
    torch.testing.assert_close(plain, torch.tensor([0.405, 0.125, 1.125], dtype=D), atol=1e-12, rtol=0)
    assert none_clipped.sum() == 0


def test_whitening_and_explained_variance():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 0.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=D)
    s = math.sqrt(1.5)  # 1 / sqrt(2/3)
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-s, 0.0, 0.0], [s, 0.0, 0.0]], dtype=D), atol=1e-7, rtol=0)
    assert whiten(torch.ones(2, 3, dtype=D), mask).abs().sum() == 0  # equal advantages: 0, not nan
    returns = torch.tensor([[1.0, 2.0, 7.0], [3.0, 5.0, 5.0]], dtype=D)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)


def _rollout(prompt_ids, completion_ids, reward):
    return Rollout(Example("q", None, "a"), 0, list(prompt_ids), list(completion_ids), [-0.5] * len(completion_ids),
                   "", 0, score=Score(reward=reward, correct=reward > 0))


def test_rows_get_gae_advantages_on_their_response_positions():
    """Two rollouts (prompt 2 tokens; responses of 3 and 1 tokens), gamma = lambda = 1, not whitened: the
    advantage of each response token is r - V_old on its shifted position (the position before it)."""
    cfg = PPOConfig(group_size=2, gamma=1.0, lam=1.0, whiten_advantages=False)
    ctx = RowContext(tokenizer=None, chat=False, max_length=64, algorithm=cfg)
    rows, _ = build_rows([_rollout([5, 6], [7, 8, 9], 1.0), _rollout([5, 6], [4], 0.0)], ctx)
    assert [r["reward"] for r in rows] == [1.0, 0.0] and rows[0]["advantages"] == [0.0] * 4
    rows[0]["old_values"] = [0.0, 0.25, 0.5, 0.75]  # positions 1..3 predict the response tokens
    rows[1]["old_values"] = [0.0, 0.5]
    out, stats = gae_rows(rows, ctx)
    assert out[0]["advantages"] == pytest.approx([0.0, 0.75, 0.5, 0.25])
    assert out[0]["returns"] == pytest.approx([0.0, 1.0, 1.0, 1.0])
    assert out[1]["advantages"] == pytest.approx([0.0, -0.5]) and out[1]["returns"] == pytest.approx([0.0, 0.0])
    assert stats["train/value_mean"] == pytest.approx((0.25 + 0.5 + 0.75 + 0.5) / 4)
    assert stats["train/return_mean"] == pytest.approx(3 / 4)
    batch = pad_ppo_rows(out, 0)
    assert batch["returns"].shape == batch["advantages"].shape == (2, 4)
    whitened, _ = gae_rows(rows, RowContext(None, False, 64, PPOConfig(group_size=2, gamma=1.0, lam=1.0)))
    a = torch.tensor([0.75, 0.5, 0.25, -0.5], dtype=D)
    want = ((a - a.mean()) / a.std(unbiased=False)).tolist()
    assert whitened[0]["advantages"][1:] + whitened[1]["advantages"][1:] == pytest.approx(want)


class ValueTable(torch.nn.Module):
    """A value model: the value of a position is a learnable number per token id (logits [B, T, 1])."""

    def __init__(self):
        super().__init__()
        self.values = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 11, dtype=torch.float32))

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.values[input_ids].unsqueeze(-1))


def test_value_loss_is_invariant_to_micro_batching_and_golden_on_one_token():
    gen = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, 11, (4, 7), generator=gen)
    labels = input_ids.clone()
    labels[:, :2] = IGNORE_INDEX
    for row, length in enumerate([5, 3, 4, 2]):
        labels[row, 2 + length:] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
             "old_values": torch.randn(4, 6, generator=gen), "returns": torch.randn(4, 6, generator=gen)}
    cfg = PPOConfig(value_clip=0.1)
    _, sums = assert_micro_batches_sum_to_full_batch(ValueTable(), batch, cfg, ("value_loss_sum", "value_clip_tokens",
                                                                                "value_tokens"), value_loss)
    assert sums["value_tokens"] == 14 and 0 < sums["value_clip_tokens"] < 14
    # one token: V = values[id] at the position before it; 0.5 (V - R)^2 with V_old = V (nothing clips)
    model = ValueTable()
    one = {"input_ids": torch.tensor([[3, 8]]), "attention_mask": torch.ones(1, 2, dtype=torch.long),
           "labels": torch.tensor([[IGNORE_INDEX, 8]]), "old_values": torch.tensor([[-0.4]]),
           "returns": torch.tensor([[1.0]])}
    loss, sums = value_loss(model, one, cfg, StepCounts(num_tokens=2, num_sequences=1))  # V(token 3) = -0.4
    assert loss.item() == pytest.approx(0.5 * 1.4 ** 2 / 2)
    assert value_log_metrics(sums, 1) == pytest.approx({"train/value_loss": 0.98, "train/value_clip_frac": 0.0})


# ---- config checks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm, message", [
    ({"advantage": "rloo"}, r"takes its advantages from the critic \(GAE\), not from groups: remove advantage='rloo'"),
    ({"process_coef": 0.5}, "remove process_coef=0.5"),
    ({"critic_peft": {"method": "lora", "rank": 4}}, "critic_peft.rank: Extra inputs are not permitted"),
    ({"critic_peft": {"method": "nope"}}, "critic_peft.method='nope': not a PEFT method"),
    ({"gamma": 1.5}, "gamma"),
])
def test_config_errors_name_the_key(tmp_path, algorithm, message):
    from rlft.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        rl_config(tmp_path, "bad", algorithm={"name": "ppo", "group_size": 4, **algorithm})


@pytest.mark.parametrize("algorithm, message", [
    ({"critic_warmup": 2}, r"critic_warmup=2 iterations leave the actor none of the run's 2"),
    ({"critic_peft": {"method": "pissa"}}, r"cannot train a value head; set algorithm.critic_peft to one that can "
                                           r"\(full, lora\)"),
    ({"critic_ranks": 3}, "does not split into the critic's 3 ranks"),
])
def test_run_checks_fail_before_any_role_starts(tmp_path, algorithm, message):
    from rlft.control import Controller

    ctl = Controller(rl_config(tmp_path, "bad", algorithm={"name": "ppo", "group_size": 4, **algorithm}),
                     show_progress=False)
    with pytest.raises(ValueError, match=message):
        ctl.setup()
    assert ctl.learners is None


def test_memory_estimate_and_cpus_count_the_critic(tmp_path):
    from rlft.algorithms import ALGORITHMS
    from rlft.control.startup import required_cpus
    from rlft.data.models import resolve_model
    from rlft.footprint import ModelShape, estimate

    cfg = rl_config(tmp_path, "p", runtime={"mode": "local"}, learner={"count": 2},
                    algorithm={"name": "ppo", "group_size": 4, "critic_ranks": 1, "critic_peft": {"method": "full"}})
    spec = ALGORITHMS["ppo"]
    assert required_cpus(cfg, spec) == 2 + 1 + 0.25 + 1
    found = {r.kind: r for r in estimate(cfg, spec, ModelShape.from_folder(resolve_model(cfg.model)), "float32", "lora")}
    critic, learner = found["critic"], found["learner"]
    assert critic.count == 1 and critic.count_setting == "algorithm.critic_ranks"
    rank = critic.processes[0].parts
    assert "logits" not in rank and "sync payload" not in rank
    assert rank["optimizer state"] > learner.processes[0].parts["optimizer state"]  # full fine-tuning vs LoRA


# ---- one run with a real vLLM generator, real DeepSpeed ranks and the real critic ------------------------


def _rows(path) -> list[dict]:
    from tests.helpers import UNTIMED

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(UNTIMED)} for row in rows]


def final_policy_and_critic(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the final checkpoint: the policy's (LoRA adapter) and the critic's (critic/...)."""
    from safetensors.torch import load_file

    final = run / "checkpoints" / "final"
    out = {}
    for path in sorted(final.glob("*.safetensors")) + sorted((final / "critic").glob("*.safetensors")):
        out.update({f"{path.parent.name}/{k}": v for k, v in load_file(path).items()})
    return out


def test_ppo_run_trains_the_critic_and_resumes_exactly(tmp_path, one_torch_thread):
    """Inline: a short SFT warm start, then PPO with a vLLM generator, a DeepSpeed learner rank and a
    DeepSpeed critic rank (LoRA on the warm start, a fresh value head) for 4 iterations of 8 prompts x 4
    samples in 2 optimizer steps each, rewarded by the answer and the column steps (dense enough for a
    critic to fit), the first iteration the critic's alone. The critic's value loss falls and its values
    move to the returns; the step checkpoint holds the critic beside the policy; a run resumed from it
    logs the same values and ends with the same policy and critic, bit for bit."""
    from transformers import AutoModelForTokenClassification

    from rlft.control import train

    # a short SFT of the tiny model (the format and some column sums), in seconds
    write_tiny_sft_recipe(tmp_path / "warm.yaml", "warm", steps=80, batch_size=64, warmup_steps=10,
                          task={"digits": 2, "train_size": 352, "eval_size": 64}, eval={"num_examples": 0})

    def make(**extra):
        return rl_config(tmp_path, "ppo", warm_start={"recipe": str(tmp_path / "warm.yaml")},
                         task={"train_size": 2000, "eval_size": 64}, eval={"num_examples": 32, "max_new_tokens": 32},
                         algorithm={"name": "ppo", "group_size": 4, "critic_warmup": 1, "critic_lr": 3e-3},
                         peft={"method": "lora", "r": 8, "alpha": 16},
                         reward={"components": [{"name": "answer"}, {"name": "steps", "weight": 1.0}]},
                         rollout={"max_new_tokens": 32, "mini_batches": 2},
                         train={"steps": 8, "batch_size": 16, "micro_batch_size": 8, "lr": 1e-3, "grad_clip": 1.0,
                                "save_every": 4}, **extra)

    summary = train(make(), show_progress=False)
    run = Path(summary["run_dir"])
    rows = _rows(run / "metrics.jsonl")
    trained = [r for r in rows if "train/value_loss" in r]
    assert len(trained) == 4 and "train/loss" not in trained[0] and all("train/loss" in r for r in trained[1:])
    for key in ("train/value_mean", "train/return_mean", "train/explained_variance", "train/value_clip_frac",
                "critic/loss", "critic/grad_norm", "critic/lr"):
        assert all(key in r for r in trained), key
    first, last = trained[0], trained[-1]
    assert last["train/value_loss"] < first["train/value_loss"]
    assert abs(last["train/value_mean"] - last["train/return_mean"]) < abs(first["train/value_mean"] -
                                                                           first["train/return_mean"])
    step = run / "checkpoints" / "step_4"
    assert (step / "resume" / "critic" / "learner_rank0.json").is_file()
    assert AutoModelForTokenClassification.from_pretrained(run / "checkpoints" / "final" / "critic").config.num_labels == 1
    # resume from step 4 into the same run folder: the rows after it are logged again, the old ones set aside
    final_before = final_policy_and_critic(run)
    resumed = train(make(resume=str(step)), show_progress=False)
    assert resumed["resumed_from"] == str(step)
    again = [r for r in _rows(run / "metrics.jsonl") if r["step"] > 4]
    assert again == _rows(run / "metrics.after_step_4.jsonl") and again
    final_after = final_policy_and_critic(run)
    assert final_before.keys() == final_after.keys()
    for name in final_before:
        assert torch.equal(final_before[name], final_after[name]), name


def test_value_head_one_scalar_per_token_without_dropout_and_lora_trains_it_whole(tmp_path):
    """The causal LM family's "value" head: AutoModelForTokenClassification with one label and no dropout
    (eval and train mode give the same values); LoRA (TOKEN_CLS) trains the head whole beside the adapters,
    and saves the merged token classifier with the adapter folder beneath it."""
    from transformers import AutoModelForTokenClassification

    from rlft.data.model_config import ModelConfig
    from rlft.data.models import resolve_model
    from rlft.families import family_for
    from rlft.peft import PEFT_METHODS

    path = resolve_model(ModelConfig(name="tiny"))
    family = family_for(path)
    model = family.load_model(path, torch.float32, head="value")
    ids = torch.tensor([[3, 4, 5, 6]])
    values = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert values.shape == (1, 4, 1)
    torch.testing.assert_close(model.train()(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    lora = PEFT_METHODS["lora"](PEFT_METHODS["lora"].config_cls(method="lora", r=4, alpha=8))
    wrapped = lora.wrap(model, seed=0, with_reference=False)
    trained = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert any(".score." in n for n in trained) and any("lora_A" in n for n in trained)
    lora.save(wrapped, family.load_tokenizer(path), tmp_path / "critic")
    assert (tmp_path / "critic" / "adapter" / "adapter_config.json").is_file()
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "critic")
    torch.testing.assert_close(loaded(input_ids=ids).logits, wrapped.eval()(input_ids=ids).logits)


def test_a_dead_critic_rank_stops_the_run_like_a_dead_learner_rank(tmp_path):
    """A critic rank holds optimizer state no restart can rebuild: the run stops with LearnerFailed naming
    the critic and the checkpoint to resume from, and the loop does not try to replace it."""
    import ray.exceptions

    from rlft.control.recovery import Recovery, dead_rank_group, explain_fault
    from rlft.faults import LearnerFailed

    class Group:
        def __init__(self, dead):
            self.dead = dead

        def dead_members(self):
            return [0] if self.dead else []

    cfg = rl_config(tmp_path, "p", algorithm={"name": "ppo", "group_size": 4})
    roles = {"learner": Group(False), "generator": Group(False), "critic": Group(True)}
    assert dead_rank_group(cfg, roles) == "critic"
    err = ray.exceptions.RayActorError()
    failed = explain_fault(err, cfg, roles, tmp_path)
    assert isinstance(failed, LearnerFailed) and str(failed).startswith("a critic rank died")
    with pytest.raises(ray.exceptions.RayActorError):
        Recovery(cfg, roles).replace_dead_actors(err)
    assert dead_rank_group(cfg, {**roles, "critic": Group(False)}) is None
