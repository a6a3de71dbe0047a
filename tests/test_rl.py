"""The RL loop with real vLLM generators and DeepSpeed learners: sync verification and runs."""

import dataclasses
import json

import pytest
import torch

from rlft.controller import Controller, train
from rlft.data.collate import encode_prompt
from rlft.rl_controller import RLController, SyncError
from rlft.rollouts import Rollout
from tests.helpers import tiny_config

RL = dict(
    algorithm={"name": "gppo", "group_size": 4},
    peft={"method": "lora", "r": 4, "alpha": 8},
    generator={"count": 1, "kv_cache_mb": 64},
    rollout={"max_new_tokens": 24},
    train={"batch_size": 8, "micro_batch_size": 4, "lr": 1e-2},
)


def _rl_config(tmp_path, name, **over):
    sections = {k: dict(v) for k, v in RL.items()}
    for key, values in over.items():
        sections.setdefault(key, {}).update(values)
    return tiny_config(tmp_path, name, **sections)


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    """One inline RL controller (1 vLLM engine, 1 learner rank) shared by the sync tests."""
    ctl = RLController(_rl_config(tmp_path_factory.mktemp("rl"), "sync"), show_progress=False)
    ctl.setup()
    yield ctl
    ctl.close()


def test_publish_loads_the_exact_adapter_and_probe_agrees(controller):
    sync = controller.publish()
    assert sync["sync/version"] == controller.version and sync["sync/bytes"] > 0
    assert controller.generators.members[0].fingerprint is not None
    assert controller.parity_probe() < controller.cfg.sync.parity_tolerance


def test_corrupted_adapter_is_caught_by_the_fingerprint(controller, monkeypatch):
    generator = controller.generators.members[0]
    original = generator.load_adapter

    def corrupt_in_transit(payload):
        data = bytearray(payload.tensors)
        data[-1] ^= 0x40  # flip one bit of the last tensor value
        return original(dataclasses.replace(payload, tensors=bytes(data)))

    monkeypatch.setattr(generator, "load_adapter", corrupt_in_transit)
    with pytest.raises(SyncError, match=r"generator 0 loaded adapter version \d+ with fingerprint .* but the learner published"):
        controller.publish()


def test_parity_probe_catches_a_silently_skipped_load(controller, monkeypatch):
    """A generator that reports the right fingerprint but keeps old weights fails the probe."""
    rollouts = controller.generate(controller.train_examples[:2], 4, 1.0, seed=1)
    controller.score(rollouts)
    for r in rollouts:  # make every advantage non-zero so the update moves the policy
        r.reward = float(len(r.completion_ids) % 2)
    rows, _ = controller.training_rows(rollouts)
    controller.optimize(rows)
    generator = controller.generators.members[0]
    monkeypatch.setattr(generator, "load_adapter", lambda payload: payload.fingerprint)
    controller.publish()
    with pytest.raises(SyncError, match="logprob parity probe"):
        controller.parity_probe()


def _synthetic_rows(ctl, n=8):
    """Rollout rows from reference responses with fixed advantages and perturbed old log-probs."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i, ex in enumerate(ctl.train_examples[:n]):
        prompt = encode_prompt(ctl.tokenizer, ex.prompt, False)
        completion = ctl.tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [ctl.tokenizer.eos_token_id]
        logprobs = (-torch.rand(len(completion), generator=gen) * 2).tolist()
        r = Rollout(ex, i // 4, prompt, completion, logprobs, ex.response, 0)
        r.reward = float(i % 3 == 0)
        rows.append(r)
    return ctl.training_rows(rows)[0]


def _gppo_step(cfg):
    ctl = RLController(cfg, show_progress=False)
    Controller.setup(ctl)  # learners only: this checks the update, not generation
    try:
        out = ctl.optimize(_synthetic_rows(ctl))
        return out, ctl.learners.call_one(0, "trainable_state")
    finally:
        Controller.close(ctl)


def test_gppo_update_two_ranks_equal_one_rank(tmp_path):
    one_out, one_state = _gppo_step(_rl_config(tmp_path, "g1", train={"lr": 1e-3, "grad_clip": 0.0}))
    two_out, two_state = _gppo_step(_rl_config(tmp_path, "g2", train={"lr": 1e-3, "grad_clip": 0.0},
                                               runtime={"mode": "local"}, learner={"count": 2}))
    assert one_out["clip_low_tokens"] + one_out["clip_high_tokens"] > 0, "the test should exercise clipping"
    for key in ("loss", "pg_loss_sum", "clip_low_tokens", "clip_high_tokens", "grad_norm"):
        assert two_out[key] == pytest.approx(one_out[key], rel=1e-4, abs=1e-7), key
    for name in one_state:
        torch.testing.assert_close(two_state[name], one_state[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["inline", "local"])
def test_rl_run_end_to_end(tmp_path, mode):
    over = {"train": {"steps": 2, "lr": 1e-3}, "runtime": {"mode": mode}}
    if mode == "local":
        over.update(generator={"count": 2}, learner={"count": 2})
    summary = train(_rl_config(tmp_path, mode, **over), show_progress=False)
    assert summary["policy_version"] == 2
    rows = [json.loads(line) for line in (tmp_path / "runs" / mode / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    for key in ("reward/mean", "reward/accuracy_arith", "rollout/response_length", "rollout/staleness",
                "train/loss", "train/clip_low_frac", "train/clip_high_frac", "train/dual_clip_frac",
                "train/entropy", "train/kl", "train/grad_norm", "perf/gen_tokens_per_s", "perf/train_tokens_per_s",
                "perf/time_generate", "perf/time_train", "sync/bytes", "sync/seconds", "sync/parity_max_abs_diff",
                "eval/accuracy"):
        assert key in keys, key
    assert max(r.get("sync/parity_max_abs_diff", 0.0) for r in rows) < 1e-3
    adapter = tmp_path / "runs" / mode / "checkpoints" / "final" / "adapter_config.json"
    assert json.loads(adapter.read_text())["r"] == 4


@pytest.mark.parametrize("over, message", [
    ({"algorithm": {"kl_coef": 0.1, "kl_placement": "reward"}}, "kl_placement=reward is not wired"),
    ({"algorithm": {"kl_coef": 0.1}, "peft": {"method": "pissa"}}, "KL reference with PiSSA"),
    ({"peft": {"method": "full"}}, "ships adapters"),
    ({"train": {"batch_size": 10, "micro_batch_size": 5}}, "not a multiple of algorithm.group_size"),
])
def test_unsupported_rl_settings_fail_before_any_role_starts(tmp_path, over, message):
    ctl = RLController(_rl_config(tmp_path, "bad", **over), show_progress=False)
    with pytest.raises(ValueError, match=message):
        ctl.setup()
    assert ctl.learners is None
