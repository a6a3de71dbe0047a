"""ZeRO-3 learners (rlft.roles.zero3): each rank holds a slice of every parameter, and what reads the
weights whole (the step, the export, the checkpoint, the reference, resume) gives what ZeRO-2 gives.

The tiny model's matrices have 16384 elements and its norms 128: with learner.zero3_persistence_threshold
1000 the matrices are partitioned and the norms stay whole on every rank, so both kinds are exercised;
with learner.zero3_live_mb 1 (the model is 1.7 MiB) exports and checkpoints gather it in several buckets.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft.algorithms import ALGORITHMS
from rlft.control import Controller
from rlft.roles.zero3 import unit_buckets
from tests.helpers import (LEARNER_ONLY_GPPO, deterministic_rows, final_weights, held_out_probe,
                           original_model_logprobs, rl_config, synthetic_rollout_rows, tiny_config)


def zero3_config(tmp_path, name, stage, count, peft=None, algorithm=LEARNER_ONLY_GPPO.name, **over):
    """GPPO (by default its learner step alone) with a KL to the reference (full fine-tuning keeps a
    reference copy, partitioned too)."""
    return rl_config(tmp_path, name, algorithm={"name": algorithm, "kl_coef": 0.1},
                     train={"lr": 1e-3, "grad_clip": 0.0}, peft=peft or {"method": "full"},
                     learner={"zero_stage": stage, "count": count, "zero3_persistence_threshold": 1000,
                              "zero3_live_mb": 1},
                     runtime={"mode": "local" if count > 1 else "inline"}, **over)


def test_buckets_keep_each_unit_whole_and_close_before_overflowing():
    """Sizes in bytes; units by the name's first letter (a LoRA layer's base weight, A and B share one)."""
    sizes = [("a.w", 4), ("a.lora_A", 1), ("b.w", 4), ("c.w", 9), ("d.w", 2), ("d.b", 1)]
    assert unit_buckets(sizes, lambda n: n[0], 6) == [["a.w", "a.lora_A"], ["b.w"], ["c.w"], ["d.w", "d.b"]]
    assert unit_buckets(sizes, lambda n: n[0], 10) == [["a.w", "a.lora_A", "b.w"], ["c.w"], ["d.w", "d.b"]]
    assert unit_buckets(sizes, lambda n: n[0], None) == [[n for n, _ in sizes]]


def one_step(cfg):
    """(metrics, trainable weights) after one step of a fresh inline controller."""
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        out, _ = ctl.optimize(synthetic_rollout_rows(ctl))
        return out, ctl.learners.call_lead("trainable_state")
    finally:
        ctl.close()


@pytest.fixture(scope="module", autouse=True)
def learner_only_gppo():
    """GPPO's learner step without generators (tests/helpers.py), for this module's tests."""
    ALGORITHMS.register(LEARNER_ONLY_GPPO.name, LEARNER_ONLY_GPPO, replace=True)
    yield
    ALGORITHMS.unregister(LEARNER_ONLY_GPPO.name)


@pytest.fixture(scope="module")
def two_zero3_ranks(tmp_path_factory):
    """One step of full fine-tuning on 2 learner ranks at ZeRO-3, beside one vLLM generator that gets the
    merged weights: (controller, metrics, trained weights)."""
    ctl = Controller(zero3_config(tmp_path_factory.mktemp("z3"), "two", 3, 2, algorithm="gppo",
                                  sync={"weights": "merged", "bucket_mb": 1}), show_progress=False)
    ctl.setup()
    try:
        out, _ = ctl.optimize(synthetic_rollout_rows(ctl))
        yield ctl, out, ctl.learners.call_lead("trainable_state")
    finally:
        ctl.close()


def test_two_zero3_ranks_equal_one_rank_and_zero2(tmp_path, two_zero3_ranks):
    """The same step on 1 rank at ZeRO-3 and at ZeRO-2: float32 sums in another order (reduce-scatter over
    ranks), so equal to float32 rounding of the step, as the stage-2 invariance test allows."""
    _, two_out, two_state = two_zero3_ranks
    one_out, one_state = one_step(zero3_config(tmp_path, "one", 3, 1))
    stage2_out, stage2_state = one_step(zero3_config(tmp_path, "stage2", 2, 1))
    for out in (two_out, stage2_out):
        for key in ("loss", "pg_loss_sum", "kl_sum", "clip_low_tokens", "grad_norm"):
            assert out[key] == pytest.approx(one_out[key], rel=1e-4, abs=1e-7), key
    assert set(two_state) == set(one_state) == set(stage2_state)
    for name in one_state:
        assert two_state[name].shape == one_state[name].shape  # gathered whole, not a rank's slice
        torch.testing.assert_close(two_state[name], one_state[name], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(stage2_state[name], one_state[name], atol=1e-5, rtol=1e-4)


def test_generators_load_the_zero3_export_and_the_parity_probe_agrees(two_zero3_ranks):
    """A publish with every rank gathering: the generator's fingerprint is checked against rank 0's
    export (publish raises otherwise) and its log-probs against the partitioned policy's, within the
    probe's tolerance."""
    ctl, _, _ = two_zero3_ranks
    sync = ctl.sync.publish()
    assert sync["sync/version"] == ctl.policy_version and sync["sync/bytes"] > 0
    assert sync["sync/parity_max_abs_diff"] < ctl.sync.tolerance


def test_each_rank_loads_its_slices_of_the_policy_and_the_reference_only(two_zero3_ranks):
    """Loaded under deepspeed.zero.Init (rlft.roles.zero3.loading_partitioned): right after loading, rank 0
    holds half of every parameter (rounded up) of the policy and of the reference copy loaded beside it,
    never a whole model; the persistence threshold only applies once DeepSpeed's engine starts."""
    ctl, _, _ = two_zero3_ranks
    sizes = [p.numel() for p in AutoModelForCausalLM.from_pretrained(ctl.model_path).parameters()]
    info = ctl.learner_info
    assert info["total_params"] == sum(sizes)
    assert info["loaded_params"] == 2 * sum((n + 1) // 2 for n in sizes)


def test_the_partitioned_reference_is_the_original_model(two_zero3_ranks):
    """The reference copy, partitioned like the policy, scores as the untouched model does (the same
    float32 forward: only op order can differ); the trained policy does not."""
    ctl, _, _ = two_zero3_ranks
    probe = held_out_probe(ctl)
    original = original_model_logprobs(ctl.cfg, probe)
    reference = ctl.learners.call_lead("token_logprobs", probe, reference=True)
    policy = ctl.learners.call_lead("token_logprobs", probe)
    torch.testing.assert_close(reference, original, atol=1e-5, rtol=0)
    assert (policy - original).abs().max() > 1e-4


def test_the_lora_reference_at_zero3_is_the_base_model(tmp_path):
    """LoRA's reference is the partitioned model with the adapter disabled (one rank, its parameters
    partitioned all the same): after a step it still scores as the untouched model."""
    ctl = Controller(zero3_config(tmp_path, "lora", 3, 1, {"method": "lora", "r": 4}), show_progress=False)
    ctl.setup()
    try:
        ctl.optimize(synthetic_rollout_rows(ctl))
        probe = held_out_probe(ctl)
        reference = ctl.learners.call_lead("token_logprobs", probe, reference=True)
        policy = ctl.learners.call_lead("token_logprobs", probe)
        assert ctl.learners.members[0].partitioned
    finally:
        ctl.close()
    original = original_model_logprobs(ctl.cfg, probe)
    torch.testing.assert_close(reference, original, atol=1e-5, rtol=0)
    assert (policy - original).abs().max() > 1e-5


def test_the_zero3_checkpoint_holds_the_trained_weights(tmp_path, two_zero3_ranks):
    """Written by rank 0 from weights gathered bucket by bucket: the HF folder loads to exactly them.
    Saved right after a greedy generate on every rank (an evaluation on the learners)."""
    from transformers import AutoModelForCausalLM

    ctl, _, state = two_zero3_ranks
    prompts = [ctl.tokenizer(ex.prompt)["input_ids"] for ex in ctl.eval_examples[:8]]
    assert len(ctl.learners.call_lead("generate", prompts, 24, 8)) == 8
    written = ctl.learners.call("save", str(tmp_path / "ckpt"))
    assert written == [str(tmp_path / "ckpt"), None]
    loaded = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").named_parameters())
    for name, weight in state.items():
        assert torch.equal(loaded[name], weight), name


def test_two_zero3_ranks_export_the_weights_they_trained(two_zero3_ranks):
    """Every rank takes part in gathering the merged payload and rank 0 alone returns it: its fingerprint
    is that of a payload built from the trained weights (full fine-tuning ships them as they are)."""
    from rlft.sync.payload import DensePayload

    ctl, _, state = two_zero3_ranks
    bucket_bytes = ctl.cfg.sync.bucket_mb << 20
    payloads = ctl.learners.call("export_weights", 1)
    assert payloads[1] is None
    assert payloads[0].fingerprint == DensePayload.build(1, dict(state), bucket_bytes).fingerprint


def test_zero3_resume_from_each_ranks_partition_is_exact(tmp_path, two_zero3_ranks):
    """Each rank writes its own fp32 master partition and Adam moments; loading them back after another
    step and taking that step again gives the same weights and metrics bit for bit."""
    ctl, _, after_one_step = two_zero3_ranks
    folder = tmp_path / "resume"
    ctl.learners.call("save_state", str(folder))
    assert sorted(p.name for p in folder.iterdir()) == [
        "learner_rank0.json", "learner_rank0.safetensors", "learner_rank1.json", "learner_rank1.safetensors"]
    rows = synthetic_rollout_rows(ctl)
    first, _ = ctl.optimize(rows)
    first_state = ctl.learners.call_lead("trainable_state")
    ctl.learners.call("load_state", str(folder))
    again, _ = ctl.optimize(rows)
    again_state = ctl.learners.call_lead("trainable_state")
    assert again == first
    for name, weight in first_state.items():
        assert torch.equal(again_state[name], weight), name
    assert any(not torch.equal(first_state[n], w) for n, w in after_one_step.items()), "the step should move weights"


@pytest.mark.parametrize("peft, weights", [({"method": "full"}, "merged"), ({"method": "lora", "r": 4}, "merged"),
                                           ({"method": "lora", "r": 4}, "adapter")],
                         ids=["full-merged", "lora-merged", "lora-adapter"])
def test_zero3_export_equals_the_zero2_export_of_the_same_weights(tmp_path, peft, weights):
    """The stage-3 payload (gathered a group of whole layers at a time, in several sync buckets) has the
    fingerprint of the stage-2 payload of the weights the stage-3 learner trained, loaded into a stage-2
    learner; and it differs from the export before the step (the step moved what is shipped)."""
    over = {"sync": {"weights": weights, "bucket_mb": 1}}
    ctl = Controller(zero3_config(tmp_path, "s3", 3, 1, peft, **over), show_progress=False)
    ctl.setup()
    learner = ctl.learners.members[0]
    before = learner.export_weights(0).fingerprint
    ctl.optimize(synthetic_rollout_rows(ctl))
    stage3 = learner.export_weights(1)
    trained = learner.trainable_state()
    ctl.close()
    ctl = Controller(zero3_config(tmp_path, "s2", 2, 1, peft, **over), show_progress=False)
    ctl.setup()
    learner = ctl.learners.members[0]
    learner.peft.load_resume_tensors(learner.engine.module, trained)
    stage2 = learner.export_weights(1)
    ctl.close()
    assert stage3.kind == stage2.kind and stage3.num_bytes == stage2.num_bytes
    assert stage3.fingerprint == stage2.fingerprint != before


def test_an_sft_run_at_zero3_evaluates_on_its_learner_and_saves_what_zero2_saves(tmp_path):
    """SFT on one rank (no generators: the evaluations generate on the learner) at stages 2 and 3: the same
    losses and, to float32 rounding, the same final checkpoint. The checkpoint is gathered right after the
    final evaluation, whose forwards leave DeepSpeed's prefetched parameters in flight: the learner must
    release them before it gathers (zero3.settle)."""
    runs = {}
    for stage in (2, 3):
        cfg = tiny_config(tmp_path, f"sft{stage}", train={"steps": 4, "lr": 3e-3},
                          learner={"zero_stage": stage, "zero3_persistence_threshold": 1000, "zero3_live_mb": 1})
        Controller(cfg, show_progress=False).run()
        runs[stage] = cfg.run_dir
    rows = {stage: [r for r in deterministic_rows(run) if "train/loss" in r] for stage, run in runs.items()}
    assert len(rows[3]) == 4 and any("eval/accuracy" in r for r in deterministic_rows(runs[3]))
    for two, three in zip(rows[2], rows[3]):
        assert three["train/loss"] == pytest.approx(two["train/loss"], rel=1e-5)
    stage2, stage3 = final_weights(runs[2]), final_weights(runs[3])
    assert stage2.keys() == stage3.keys() and stage3
    for name in stage2:
        torch.testing.assert_close(stage3[name], stage2[name], atol=1e-5, rtol=1e-4)
