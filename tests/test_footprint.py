"""The memory estimate made before any role starts (rlft.footprint): parts derived by hand, the
refusal, and the shipped recipes against a 24 GB machine."""

from pathlib import Path

import pytest

from rlft.algorithms import ALGORITHMS
from rlft.config import load_config, switch_peft_method
from rlft.footprint import (BASELINE_MIB, GIB, MIB, ModelShape, RunDoesNotFit, check_fits, estimate,
                            trainable_params, total_bytes)
from rlft.peft import PEFT_METHODS
from tests.helpers import rl_config

ROOT = Path(__file__).resolve().parents[1]
# SmolLM2-135M-Instruct's config.json (the model is converted on first use, so not read here).
SMOLLM2 = ModelShape(params=134_515_008, hidden=576, layers=30, intermediate=1536, vocab=49152, kv_hidden=192)
SMALL = ModelShape(params=2**20, hidden=8, layers=2, intermediate=16, vocab=10, kv_hidden=4)
WEIGHTS = 4 * 2**20   # float32 bytes of SMALL


def parts(found, kind):
    role = next(r for r in found if r.kind == kind)
    return role, {p.name: p.parts for p in role.processes}


def small_run(tmp_path, **over):
    sections = {"peft": {"method": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]},
                "learner": {"count": 2, "zero_stage": 2}, "generator": {"count": 1, "kv_cache_mb": 64, "engine_processes": "separate"},
                "train": {"micro_batch_size": 2, "max_length": 8}, "sync": {"weights": "merged", "bucket_mb": 1},
                "runtime": {"mode": "local"}}
    for key, values in over.items():
        if key == "peft":  # another method keeps the keys it takes (full and hft: none)
            sections[key] = switch_peft_method(sections[key], values.get("method", sections[key]["method"]))
        sections[key] = {**sections.get(key, {}), **values}
    return rl_config(tmp_path, "small", **sections)


def test_every_part_of_a_float32_lora_run_with_merged_sync(tmp_path):
    cfg = small_run(tmp_path)
    found = estimate(cfg, ALGORITHMS["gppo"], SMALL, "float32", "lora")
    # LoRA r=2 on q (8 -> 8) and v (8 -> 4) in 2 layers: 2 x (16 + 12) x 2 = 112 trained values
    assert trainable_params(cfg, SMALL) == 112
    learners, [(_, rank0)] = parts(found, "learner")[0], parts(found, "learner")[1].items()
    assert learners.count == 2
    assert rank0 == {
        "process": BASELINE_MIB["learner"] * MIB,
        "weights": WEIGHTS,                       # 2**20 float32 values
        "gradients": 112 * 4 / 2,                 # ZeRO-2 splits them over the 2 ranks
        "optimizer state": 112 * 8 / 2,           # Adam's two float32 moments, split
        "activations": 2 * 8 * 2 * (10 * 8 + 3 * 16) * 4,   # 16 tokens x 2 layers x 128 values
        "logits": 2 * 8 * 10 * 4 * 3,             # 16 tokens x vocab 10, three float32 copies
        "sync payload": 5 * WEIGHTS + 2 * MIB,    # rank 0: PAYLOAD_COPIES["learner"], buckets of 1 MiB
    }
    assert learners.total == 2 * learners.per_member - (5 * WEIGHTS + 2 * MIB)   # rank 1 builds no payload
    generators, processes = parts(found, "generator")
    assert generators.count == 1
    assert processes == {
        "actor": {"process": BASELINE_MIB["generator"] * MIB, "sync payload": 2 * WEIGHTS + 3 * MIB},
        "engine core": {"process": BASELINE_MIB["engine_core"] * MIB, "sync payload": 3 * MIB},
        "engine worker": {"process": BASELINE_MIB["engine_worker"] * MIB, "weights": WEIGHTS, "KV cache": 64 * MIB,
                          "sync payload": 0.5 * WEIGHTS + 3 * MIB},
    }
    _, driver = parts(found, "controller")
    assert driver["driver"]["object store: sync payload"] == WEIGHTS
    assert [r.kind for r in found] == ["controller", "learner", "generator", "reward"]


def test_each_peft_method_counts_what_it_trains(tmp_path):
    """The method's own count (PeftMethod.trained_parameters): r x (in + out) per target linear for
    LoRA, PiSSA and LIFT, r x out for PaCA (its columns), half of the model for HFT, all of it for full."""
    counts = {m: trainable_params(small_run(tmp_path, peft={"method": m}), SMALL)
              for m in ("lora", "pissa", "paca", "lift", "hft", "full")}
    assert counts == {"lora": 112, "pissa": 112, "paca": 2 * (8 + 4) * 2, "lift": 112, "hft": 2**19, "full": 2**20}


def test_an_engine_in_the_generator_actor_is_one_process_holding_the_payload_once(tmp_path):
    found = estimate(small_run(tmp_path, generator={"engine_processes": "auto"}), ALGORITHMS["gppo"], SMALL,
                     "float32", "lora")   # auto: in the actor, for CPU engines in local mode
    _, processes = parts(found, "generator")
    assert processes == {"actor": {"process": BASELINE_MIB["generator_with_engine"] * MIB, "weights": WEIGHTS,
                                   "KV cache": 64 * MIB,   # the actor's copies and the worker's, in one process
                                   "sync payload": 2 * WEIGHTS + 3 * MIB + 0.5 * WEIGHTS + 3 * MIB}}
    inline = estimate(small_run(tmp_path, generator={"engine_processes": "auto"}, runtime={"mode": "inline"}),
                      ALGORITHMS["gppo"], SMALL, "float32", "lora")
    assert list(parts(inline, "generator")[1]) == ["actor", "engine core", "engine worker"]


def test_a_tensor_parallel_engine_has_a_worker_per_shard_each_with_its_share_of_the_weights(tmp_path):
    """generator.tensor_parallel_size 2: two worker processes (auto puts them outside the actor), each with half
    the weights, its own KV cache and the whole payload (every worker reloads from the full tensors)."""
    found = estimate(small_run(tmp_path, generator={"engine_processes": "auto", "tensor_parallel_size": 2}),
                     ALGORITHMS["gppo"], SMALL, "float32", "lora")
    _, processes = parts(found, "generator")
    assert list(processes) == ["actor", "engine core", "engine worker 0", "engine worker 1"]
    one = estimate(small_run(tmp_path), ALGORITHMS["gppo"], SMALL, "float32", "lora")
    single = parts(one, "generator")[1]["engine worker"]
    for worker in ("engine worker 0", "engine worker 1"):
        assert processes[worker] == {**single, "weights": WEIGHTS / 2}


def test_sixteen_bits_full_fine_tuning_keeps_float32_master_weights_split_by_zero_1(tmp_path):
    cfg = small_run(tmp_path, peft={"method": "full"}, learner={"zero_stage": 1})
    _, processes = parts(estimate(cfg, ALGORITHMS["gppo"], SMALL, "torch.bfloat16", None), "learner")
    rank0 = processes["rank"]
    assert rank0["weights"] == WEIGHTS / 2                  # 2 bytes per value
    assert rank0["gradients"] == 2**20 * 4                  # ZeRO-1 keeps whole gradients
    assert rank0["optimizer state"] == 2**20 * (8 + 4) / 2  # moments and float32 master, split
    assert rank0["sync payload"] == 5 * WEIGHTS / 2 + 2 * MIB


def test_zero_3_splits_the_weights_too_and_gathers_up_to_its_live_size(tmp_path):
    """SMALL is 4 MiB in float32: each of 2 ranks holds half of it, gathers 1 MiB of it at a time
    (learner.zero3_live_mb) and reduces gradients through a bucket of that size."""
    found = {stage: parts(estimate(small_run(tmp_path, peft={"method": "full"}, learner={"zero_stage": stage,
                                                                                        "zero3_live_mb": 1}),
                                   ALGORITHMS["gppo"], SMALL, "torch.float32", None), "learner")[1]["rank"]
             for stage in (2, 3)}
    assert found[2]["weights"] == WEIGHTS and "gathered weights" not in found[2]
    assert found[3]["weights"] == WEIGHTS / 2
    assert found[3]["gathered weights"] == found[3]["reduce bucket"] == MIB
    for part in ("gradients", "optimizer state", "activations", "sync payload"):
        assert found[3][part] == found[2][part], part


def test_adapter_payloads_are_small_and_partial_sync_keeps_a_checkpoint_copy(tmp_path):
    lora = estimate(small_run(tmp_path, sync={"weights": "adapter"}), ALGORITHMS["gppo"], SMALL, "float32", "lora")
    assert parts(lora, "generator")[1]["engine core"]["sync payload"] == 3 * 112 * 4   # small, one "bucket"
    hft = small_run(tmp_path, sync={"weights": "adapter"}, peft={"method": "hft"}, learner={"zero_stage": 0})
    _, processes = parts(estimate(hft, ALGORITHMS["gppo"], SMALL, "float32", "partial"), "generator")
    assert processes["engine worker"]["checkpoint copy"] == WEIGHTS   # rlft.sync.shadow's tensors
    assert processes["actor"]["sync payload"] == 2 * WEIGHTS / 2 + 3 * MIB   # half of the weights, in buckets


def test_inline_mode_counts_one_process_for_every_role(tmp_path):
    inline = estimate(small_run(tmp_path, runtime={"mode": "inline"}), ALGORITHMS["gppo"], SMALL, "float32", "lora")
    learners, ranks = parts(inline, "learner")
    assert learners.count == 1 and "process" not in ranks["rank"]   # one rank, in the driver's process
    assert ranks["rank"]["gradients"] == 112 * 4                     # nothing to split it with
    assert "process" not in parts(inline, "generator")[1]["actor"]   # the generator object lives there too
    assert parts(inline, "controller")[1]["driver"] == {"process": BASELINE_MIB["driver"] * MIB}   # no Ray
    assert [r.kind for r in inline] == ["controller", "learner", "generator"]   # no reward actor process


def test_a_run_that_does_not_fit_names_the_role_the_part_and_the_settings(tmp_path):
    found = estimate(small_run(tmp_path, generator={"count": 3}), ALGORITHMS["gppo"], SMALL, "float32", "lora")
    needed = total_bytes(found)
    check_fits(found, needed, "runtime.memory_gb")  # exactly enough
    with pytest.raises(RunDoesNotFit) as refused:
        check_fits(found, needed - 1, "runtime.memory_gb")
    message = str(refused.value)
    assert "the generator role takes the most (3 x" in message
    # the largest part a setting controls (the processes themselves are what they are)
    assert "largest part engine worker: KV cache 0.06 GiB" in message
    assert "lower generator.kv_cache_mb or generator.count" in message
    assert f"needs about {needed / GIB:.1f} GiB" in message and "runtime.memory_check=warn" in message


def test_shape_is_read_from_the_model_folder(tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 64, "num_hidden_layers": 3, "intermediate_size": 96, '
                                        '"vocab_size": 50, "num_attention_heads": 4, "num_key_value_heads": 2}')
    save_file({"a": torch.zeros(3, 5), "b": torch.zeros(7)}, folder / "model-1.safetensors")
    save_file({"c": torch.zeros(2, 2, 2, dtype=torch.bfloat16)}, folder / "model-2.safetensors")
    shape = ModelShape.from_folder(folder)
    assert shape == ModelShape(params=15 + 7 + 8, hidden=64, layers=3, intermediate=96, vocab=50, kv_hidden=32)


def recipe_estimate(path: str, shape: ModelShape, **changes):
    cfg = load_config(ROOT / path)
    for section, values in changes.items():
        setattr(cfg, section, getattr(cfg, section).model_copy(update=values))
    return total_bytes(estimate(cfg, ALGORITHMS[cfg.algorithm.name], shape, "float32",
                                PEFT_METHODS[cfg.peft.method].payload_kind))


SMOLLM2_RECIPES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*smollm2*.yaml"))


@pytest.mark.parametrize("path", SMOLLM2_RECIPES)
def test_shipped_smollm2_recipes_fit_a_24_gb_machine_with_margin(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name their warm starts relative to the checkout
    assert recipe_estimate(path, SMOLLM2) < 18 * GIB


def test_the_recipe_that_was_killed_for_memory_is_refused_before_it_starts(monkeypatch):
    """gppo_smollm2_gsm as it shipped before (2 generators, micro-batches of 4, float32, the merged
    weights sent whole, vLLM in processes of its own) was killed by Ray's memory monitor at 22.7 GB on a 24 GB machine; its estimate
    is above what such a machine offers, and above what it used when it was killed."""
    monkeypatch.chdir(ROOT)
    before = recipe_estimate("configs/gppo_smollm2_gsm.yaml", SMOLLM2, generator={"count": 2, "engine_processes": "separate"},
                             train={"micro_batch_size": 4}, sync={"bucket_mb": None})
    assert before > 22.7e9 > 0.95 * 24e9 - 1e9


# ---------------------------------------------------------------- bucketed dense payloads
def layered_weights() -> dict:
    import torch

    weights = {"model.embed_tokens.weight": torch.randn(10, 4), "model.norm.weight": torch.randn(4)}
    for layer in range(3):
        for part in ("q_proj", "k_proj", "v_proj"):
            weights[f"model.layers.{layer}.self_attn.{part}.weight"] = torch.randn(4, 4)  # 64 bytes each
    return weights


def test_buckets_hold_whole_layers_up_to_their_size():
    from rlft.sync.payload import bucket_names

    weights = layered_weights()   # the non-layer group is 176 bytes, each layer 192
    assert [sorted(b) for b in bucket_names(weights, None)] == [sorted(weights)]
    buckets = bucket_names(weights, 400)   # non-layer + layer 0 (368), then layers 1 + 2 (384)
    assert [len(b) for b in buckets] == [5, 6]
    assert sorted(buckets[1]) == sorted(n for n in weights if ".layers.1." in n or ".layers.2." in n)
    assert [len(b) for b in bucket_names(weights, 1)] == [2, 3, 3, 3]   # a layer is never split


def test_bucketed_payload_round_trips_and_its_fingerprint_covers_every_bucket():
    import dataclasses

    from rlft.sync.payload import DensePayload, combine_fingerprints, fingerprint

    weights = layered_weights()
    expected = {name: t.clone() for name, t in weights.items()}
    whole = DensePayload.build(1, dict(weights))
    assert whole.fingerprint == fingerprint(expected) and len(whole.bucket_ends) == 1
    sent = dict(weights)
    payload = DensePayload.build(1, sent, bucket_bytes=400)
    assert sent == {}   # consumed: merged copies are freed bucket by bucket
    received = list(payload.bucket_tensors())
    assert len(received) == 2 and {k: v for part in received for k, v in part.items()}.keys() == expected.keys()
    for part in received:
        for name, value in part.items():
            assert value.equal(expected[name])
    assert payload.fingerprint == combine_fingerprints([fingerprint(part) for part in received]) != whole.fingerprint
    assert payload.num_bytes == payload.bucket_ends[-1]
    flipped = bytearray(payload.tensors)
    flipped[payload.bucket_ends[0] - 1] ^= 0x40   # the last value of the first bucket
    corrupted = dataclasses.replace(payload, tensors=bytes(flipped))
    assert combine_fingerprints([fingerprint(part) for part in corrupted.bucket_tensors()]) != payload.fingerprint
    assert payload.emptied().num_bytes == 0 and payload.emptied().version == 1
