"""The RL loop with real vLLM generators and DeepSpeed learners: sync verification and runs."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from rlft.control import Controller, train
from rlft.samples import read_samples
from rlft.sources.rollouts import generate, score
from rlft.sync.protocol import SyncError
from rlft.types import Score
from tests.helpers import (LEARNER_ONLY_GPPO, assert_probe_catches_a_skipped_load, moving_rows, rl_config,
                           synthetic_rollout_rows, tiny_config, write_tiny_sft_recipe)



@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    """One inline RL controller (1 vLLM engine, 1 learner rank) shared by the sync tests."""
    ctl = Controller(rl_config(tmp_path_factory.mktemp("rl"), "sync"), show_progress=False)
    ctl.setup()
    yield ctl
    ctl.close()


def test_publish_loads_the_exact_adapter_and_probe_agrees(controller):
    sync = controller.sync.publish()
    assert sync["sync/version"] == controller.policy_version and sync["sync/bytes"] > 0
    assert controller.roles["generator"].members[0].version == controller.policy_version
    assert sync["sync/parity_max_abs_diff"] < controller.sync.tolerance == 1e-3


def test_corrupted_adapter_is_caught_by_the_fingerprint(controller, monkeypatch):
    generator = controller.roles["generator"].members[0]
    original = generator.load_weights

    def corrupt_in_transit(payload):
        data = bytearray(payload.tensors)
        data[-1] ^= 0x40  # flip one bit of the last tensor value
        return original(dataclasses.replace(payload, tensors=bytes(data)))

    monkeypatch.setattr(generator, "load_weights", corrupt_in_transit)
    with pytest.raises(SyncError, match=r"generator 0 loaded lora weights version \d+ with fingerprint .* but the learner published"):
        controller.sync.publish()


def test_parity_probe_catches_a_silently_skipped_load(controller, monkeypatch):
    """A generator that reports the right fingerprint but keeps old weights fails the probe."""
    rollouts = generate(controller.roles["generator"], controller.tokenizer, False, controller.train_examples[:2],
                        4, 24, 1.0, 1.0, seed=1)
    score(controller.roles["reward"], rollouts)
    for i, r in enumerate(rollouts):  # alternate rewards in each group: every advantage non-zero, the policy moves
        r.score = Score(reward=float(i % 2), correct=False)
    rows, _ = controller.spec.build_rows(rollouts, controller.row_ctx)
    assert_probe_catches_a_skipped_load(controller, rows, monkeypatch)


def _gppo_step(cfg):
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        out, _ = ctl.optimize(synthetic_rollout_rows(ctl))
        return out, ctl.learners.call_one(0, "trainable_state")
    finally:
        ctl.close()


@pytest.mark.parametrize("peft, zero_stage", [({"method": "lora", "r": 4, "alpha": 8}, 2),
                                              ({"method": "lift", "r": 4, "lift_update_interval": 1}, 0)],
                         ids=["lora", "lift"])
def test_gppo_update_two_ranks_equal_one_rank(tmp_path, learner_only_gppo, peft, zero_stage):
    """LIFT also re-selects its mask after the step: both ranks train rank 0's mask."""
    same = dict(algorithm={"name": LEARNER_ONLY_GPPO.name}, train={"lr": 1e-3, "grad_clip": 0.0}, peft=peft)
    one_out, one_state = _gppo_step(rl_config(tmp_path, "g1", learner={"zero_stage": zero_stage}, **same))
    two_out, two_state = _gppo_step(rl_config(tmp_path, "g2", learner={"zero_stage": zero_stage, "count": 2},
                                              runtime={"mode": "local"}, **same))
    assert one_out["clip_low_tokens"] + one_out["clip_high_tokens"] > 0, "the test should exercise clipping"
    for key in ("loss", "pg_loss_sum", "clip_low_tokens", "clip_high_tokens", "grad_norm"):
        # ZeRO stage 0 without clipping computes no grad norm (nan on both)
        assert two_out[key] == pytest.approx(one_out[key], rel=1e-4, abs=1e-7, nan_ok=zero_stage == 0), key
    for name in one_state:
        torch.testing.assert_close(two_state[name], one_state[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["inline", "local"])
def test_rl_run_end_to_end(tmp_path, mode):
    """The loop's metrics, memory and outputs; local: the default GPPO on 2 + 2 ranks; inline: REINFORCE++ with
    its KL in the reward (the learners score each token's KL to the reference before the passes), and a
    length reward (budget, alpha 1) beside the answer, so that the untrained policy's rewards differ and it moves."""
    shaping = "steps" if mode == "local" else "budget"
    over = {"train": {"steps": 2, "lr": 1e-3}, "runtime": {"mode": mode},
            "reward": {"components": [{"name": "answer"}, {"name": "steps", "weight": 0.5}]}}
    if mode == "local":
        over.update(generator={"count": 2}, learner={"count": 2})
    else:
        over.update(algorithm={"advantage": "reinforce_pp", "kl_coef": 0.05, "kl_placement": "reward"},
                    reward={"components": [{"name": "answer"}, {"name": "budget", "weight": 0.5, "leak": False,
                                                                "alpha": {"high": 1.0}}]})
    summary = train(rl_config(tmp_path, mode, **over), show_progress=False)
    assert summary["policy_version"] == 2
    rows = [json.loads(line) for line in (tmp_path / "runs" / mode / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    for key in ("reward/mean", "reward/accuracy_arith", "reward/answer", f"reward/{shaping}", "rollout/response_length",
                "rollout/staleness", "train/loss", "train/clip_low_frac", "train/clip_high_frac", "train/dual_clip_frac",
                "train/entropy", "train/kl", "train/grad_norm", "perf/gen_tokens_per_s", "perf/train_tokens_per_s",
                "perf/time_generate", "perf/time_train", "sync/bytes", "sync/seconds", "sync/parity_max_abs_diff",
                "eval/accuracy"):
        assert key in keys, key
    trained = [r for r in rows if "reward/mean" in r]
    for r in trained:  # reward = answer + 0.5 * steps (budget), averaged over the batch
        assert r["reward/mean"] == pytest.approx(r["reward/answer"] + 0.5 * r[f"reward/{shaping}"], abs=1e-6)
        assert r["rollout/staleness"] == 0.0
    assert [r["step"] for r in trained] == [1, 2]
    if mode == "inline":  # the first batch is scored under the reference itself (LoRA starts as the identity)
        assert [r["rollout/ref_kl"] for r in trained][0] == 0.0 < trained[1]["rollout/ref_kl"]
        assert trained[1]["rollout/kl_reward"] < 0.0 and all(r["train/kl"] == 0.0 for r in trained)  # not in the loss
    assert max(r.get("sync/parity_max_abs_diff", 0.0) for r in rows) < 1e-3
    for kind in ("learner", "generator", "reward"):  # per-role memory (in inline mode: the one shared process)
        assert 50 < trained[-1][f"perf/mem_{kind}_rss_mb"] < 64_000
        assert trained[-1][f"perf/mem_{kind}_peak_rss_mb"] > 50
    if mode == "local":  # each role its own process; the generator's includes its vLLM engine core
        assert trained[-1]["perf/mem_generator_rss_mb"] > trained[-1]["perf/mem_reward_rss_mb"]
        # the estimate made before the roles started bounds what each member used, within a factor of 2
        estimate = json.loads((tmp_path / "runs" / mode / "memory_estimate.json").read_text())
        for kind in ("learner", "generator", "reward"):
            used = max(r[f"perf/mem_{kind}_{m}"] for r in trained for m in ("rss_mb", "peak_rss_mb"))
            assert used <= estimate[kind]["per_member_mib"] <= 2 * used, (kind, used, estimate[kind])
    adapter = tmp_path / "runs" / mode / "checkpoints" / "final" / "adapter_config.json"
    assert json.loads(adapter.read_text())["r"] == 4
    samples = read_samples(tmp_path / "runs" / mode)  # train.log_samples (4) of each step's rollouts, to read
    assert [r["step"] for r in samples] == [1] * 4 + [2] * 4
    assert all(r["prompt"] and r["length"] >= 1 and set(r["rewards"]) == {"answer", shaping} for r in samples)


@pytest.mark.parametrize("over, message", [
    ({"peft": {"method": "full"}}, "ships adapters"),
    ({"peft": {"method": "lift"}}, "set learner.zero_stage=0"),
    ({"peft": {"method": "pissa"}, "learner": {"zero_stage": 3}},
     "peft.method=pissa reads or rewrites its weights whole .* set learner.zero_stage to 2 or lower, or peft.method "
     "to one that trains at stage 3 \\(full, lora\\)"),
    ({"train": {"batch_size": 10, "micro_batch_size": 5}}, "not a multiple of algorithm.group_size"),
    ({"rollout": {"mini_batches": 2}, "train": {"steps": 3}}, "not a multiple of the 2 optimizer steps"),
    ({"train": {"batch_size": 8, "micro_batch_size": 8}, "learner": {"count": 2}}, "smaller than learner.count x"),
    ({"rollout": {"max_new_tokens": 60}}, r"train example 0: prompt of \d+ tokens \+ 60 more does not fit train.max_length"),
    ({"train": {"max_length": 512}}, "longer than the model's context"),
    ({"runtime": {"mode": "local", "memory_gb": 2.0}, "generator": {"count": 2}},
     r"needs about \d+\.\d GiB of memory and runtime.memory_gb offers 2.0 GiB: the generator role takes the most "
     r"\(2 x .*; lower .*generator.count"),
])
def test_unsupported_rl_settings_fail_before_any_role_starts(tmp_path, over, message):
    ctl = Controller(rl_config(tmp_path, "bad", **over), show_progress=False)
    with pytest.raises(ValueError, match=message):
        ctl.setup()
    assert ctl.learners is None and not (tmp_path / "runs" / "bad").exists()


def test_rlft_eval_reproduces_the_final_accuracy_of_a_run_with_a_warm_start(tmp_path):
    """`rlft eval CONFIG --checkpoint <run>/checkpoints/final` puts the adapter on the warm start's
    checkpoint (the base recorded, as an absolute path, in adapter_config.json) and scores the same
    held-out examples greedily: the accuracy equals the run's final eval/accuracy."""
    from rlft.control.evaluate import evaluate_checkpoint

    warm = write_tiny_sft_recipe(tmp_path / "warm.yaml", "warm", steps=200, batch_size=64, warmup_steps=20,
                                 task={"train_size": 2000, "eval_size": 32}, eval={"num_examples": 32, "max_new_tokens": 24})
    cfg = rl_config(tmp_path, "rl", warm_start={"recipe": str(warm)}, task={"train_size": 2000, "eval_size": 32},
                     eval={"num_examples": 32}, train={"steps": 2, "lr": 1e-3})
    summary = train(cfg, show_progress=False)
    assert summary["eval/accuracy"] > 0.2, "the warm start should leave a model that gets some problems right"
    ckpt = tmp_path / "elsewhere"
    shutil.copytree(summary["checkpoint"], ckpt)  # the adapter works from any folder
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute()
    assert evaluate_checkpoint(cfg, str(ckpt), show_progress=False)["eval/accuracy"] == summary["eval/accuracy"]


def test_tempered_rollouts_are_scored_by_the_learner_as_sampled(tmp_path):
    """rollout.temperature = 0.6: vLLM's sampling log-probs are of softmax(logits / T), the rows carry T,
    and GPPO's `tempered` logits give the same log-probs at version 0 (ratio 1), where the untempered
    policy would not."""
    from transformers import AutoModelForCausalLM

    from rlft.ops.logprobs import tempered
    from rlft.data.models import resolve_model
    from rlft.ops.logprobs import token_logprobs

    cfg = rl_config(tmp_path, "tempered", rollout={"temperature": 0.6})
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        rollouts, _ = ctl.source.next_batch(1, 0)
        batch = ctl.spec.pad(ctl.spec.build_rows(rollouts, ctl.row_ctx)[0], ctl.pad_id())
    finally:
        ctl.close()
    assert all(r.temperature == 0.6 for r in rollouts) and torch.all(batch["temperature"] == 0.6)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    learner, mask = token_logprobs(tempered(logits, batch), batch["labels"])
    untempered, _ = token_logprobs(logits, batch["labels"])
    sampled = batch["old_logprobs"]
    assert mask.sum() > 50
    assert ((learner - sampled).abs() * mask).max() < 1e-3
    assert ((untempered - sampled).abs() * mask).max() > 0.05


def test_rl_needs_sampled_rollouts(tmp_path):
    ctl = Controller(rl_config(tmp_path, "greedy", rollout={"temperature": 0.0}), show_progress=False)
    with pytest.raises(ValueError, match="rollout.temperature=0 samples greedily"):
        ctl.setup()


def test_bf16_learner_and_generator_agree_within_the_16_bit_tolerance(tmp_path, monkeypatch):
    """model.dtype bfloat16 on CPU: DeepSpeed (bf16) and vLLM both run bf16; the parity probe compares
    the mean difference with the 16-bit default tolerance and passes after each of 2 updates. A
    generator that then reports every load without making it falls behind the learner, and the
    probe's mean tolerance (0.1) stops the run at the first update it skips."""
    from rlft.sync.protocol import PARITY_TOLERANCE

    ctl = Controller(rl_config(tmp_path, "bf16", model={"name": "tiny", "dtype": "bfloat16"}), show_progress=False)
    ctl.setup()
    try:
        assert ctl.learner_info["dtype"] == "torch.bfloat16"
        assert ctl.roles["generator"].members[0].dtype == "bfloat16"
        assert (ctl.sync.statistic, ctl.sync.tolerance) == ("mean", PARITY_TOLERANCE[("mean", 16)]) == ("mean", 0.1)
        found = [ctl.iteration(it, last=it == 2) for it in (1, 2)]
        assert_probe_catches_a_skipped_load(ctl, moving_rows(ctl), monkeypatch)  # one update, not loaded
    finally:
        ctl.close()
    for m in found:  # bf16 engines differ, but only by rounding
        assert 0 < m["sync/parity_mean_abs_diff"] <= m["sync/parity_max_abs_diff"] < 5e-2, m


def test_parity_check_defaults_by_dtype_and_statistic():
    from rlft.sync.protocol import parity_check

    assert parity_check(torch.float32) == ("max", 1e-3)
    assert parity_check(torch.bfloat16) == parity_check(torch.float16) == ("mean", 0.1)
    assert parity_check(torch.bfloat16, "max") == ("max", 0.5)
    assert parity_check(torch.float32, "mean", 2e-3) == ("mean", 2e-3)


@pytest.mark.parametrize("method, tensor_parallel", [("lora", 1), ("full", 2)])
def test_merged_weight_sync_reloads_the_whole_policy_into_vllm(tmp_path, method, tensor_parallel, monkeypatch):
    """sync.weights=merged: generators run no LoRA; after every update they reload every weight in
    place (adapter merged in; full fine-tuning ships its weights) and the probe agrees to float32
    precision. A generator that reports the fingerprint without reloading fails the probe. Full
    fine-tuning ships in 1 MiB buckets: the 1.8 MB model in two, reloaded one after the other, into an
    engine of 2 tensor-parallel workers (one core each), each of which takes its shard of every weight."""
    buckets = {"lora": 128, "full": 1}[method]
    cfg = rl_config(tmp_path, method, sync={"weights": "merged", "bucket_mb": buckets}, peft={"method": method},
                    train={"lr": 1e-2}, generator={"tensor_parallel_size": tensor_parallel})
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        generator = ctl.roles["generator"].members[0]
        assert generator.lora_rank is None and generator._request() is None
        assert generator.llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size == tensor_parallel
        found = [ctl.iteration(it) for it in (1, 2)]
        for m in found:
            assert m["sync/parity_max_abs_diff"] < 1e-3
            assert m["sync/bytes"] > 1_000_000  # the whole tiny model (0.44M float32 parameters), not an adapter
        assert generator.version == 2
        rows = moving_rows(ctl)
        before = ctl.learners.call_one(0, "token_logprobs", ctl.sync.probe)[0]
        for _ in range(3):
            ctl.optimize(rows)
        moved = float((ctl.learners.call_one(0, "token_logprobs", ctl.sync.probe)[0] - before).abs().max())
        assert moved > 1e-2  # a real update (full: the tied embedding / LM head too)...
        assert ctl.sync.publish()["sync/parity_max_abs_diff"] < 1e-3  # ...reaches every kernel (CPU's packed LM head)
        assert_probe_catches_a_skipped_load(ctl, rows, monkeypatch)
        assert len(ctl.learners.call_one(0, "export_weights", ctl.policy_version).bucket_ends) == {128: 1, 1: 2}[buckets]
    finally:
        ctl.close()


def test_engine_on_cpu_prefills_whole_prompts_with_a_budget_for_the_longest():
    from rlft.config import GeneratorConfig
    from rlft.roles.generator import CPU_TOKEN_BUDGET, engine_kwargs

    cpu = engine_kwargs(GeneratorConfig(), "m", "float32", None, 192, seed=0, cpu=True)
    assert cpu["enable_chunked_prefill"] is False and cpu["max_num_batched_tokens"] == CPU_TOKEN_BUDGET
    assert engine_kwargs(GeneratorConfig(), "m", "float32", None, 8192, seed=0, cpu=True)["max_num_batched_tokens"] == 8192
    assert "enable_chunked_prefill" not in engine_kwargs(GeneratorConfig(), "m", "float32", None, 192, seed=0, cpu=False)


def test_cpu_engines_run_in_the_generator_process_except_beside_the_driver():
    from rlft.config import GeneratorConfig
    from rlft.roles.generator import engine_in_actor, engine_kwargs

    assert engine_in_actor("auto", "local", cpu=True) and engine_in_actor("auto", "cluster", cpu=True)
    assert not engine_in_actor("auto", "inline", cpu=True)   # it would pin the driver's threads
    assert not engine_in_actor("auto", "local", cpu=False)   # GPU engines keep vLLM's own processes
    assert engine_in_actor("in_actor", "inline", cpu=False) and not engine_in_actor("separate", "local", cpu=True)
    kwargs = engine_kwargs(GeneratorConfig(), "m", "float32", None, 192, seed=0, cpu=True, in_actor=True)
    assert kwargs["distributed_executor_backend"] == "uni"
    assert "distributed_executor_backend" not in engine_kwargs(GeneratorConfig(), "m", "float32", None, 192, seed=0, cpu=True)
    # tensor-parallel engines: one worker process per shard, whatever the mode
    assert not engine_in_actor("auto", "local", cpu=True, tensor_parallel_size=2)
    tp = engine_kwargs(GeneratorConfig(tensor_parallel_size=2), "m", "float32", None, 192, seed=0, cpu=True)
    assert tp["tensor_parallel_size"] == 2 and tp["distributed_executor_backend"] == "mp"
    with pytest.raises(ValueError, match="tensor_parallel_size=2 runs one worker process per shard"):
        GeneratorConfig(tensor_parallel_size=2, engine_processes="in_actor")


def test_seeded_sampling_of_more_prompt_tokens_than_one_engine_step_takes(tmp_path):
    """Regression: 256 seeded requests of 70-token prompts (> the 4096-token step budget) killed the
    CPU engine when a prefill was split ("CPU Generator does not use offset")."""
    from rlft.data.models import resolve_model
    from rlft.roles.generator import GeneratorActor

    cfg = tiny_config(tmp_path, "budget", generator={"count": 1, "kv_cache_mb": 64})
    actor = GeneratorActor(cfg, 0, str(resolve_model(cfg.model)), "float32", None, seed=0)
    actor.setup()
    try:
        prompts = [[4 + (i + j) % 90 for j in range(70)] for i in range(32)]
        out = actor.generate(prompts, 8, 4, 1.0, 1.0, seed=0)
        assert len(out) == 32 and all(len(samples) == 8 for samples in out)
        again = actor.generate(prompts[:2], 8, 4, 1.0, 1.0, seed=0)
        assert [s["completion_ids"] for s in again[0]] == [s["completion_ids"] for s in out[0]]  # seeded
    finally:
        actor.close()
