"""PEFT methods as the learner uses them: the reference policy each one provides."""

import pytest
import torch

from rlft.control import Controller
from tests.helpers import (
    LEARNER_ONLY_GPPO,
    held_out_probe,
    original_model_logprobs,
    synthetic_rollout_rows,
    tiny_config,
)


# Each method's own settings on top of rank 4, alpha 8 (HFT takes neither): exact SVD for PiSSA, a
# LIFT mask re-selected after every step.
PEFT = {"lora": {"r": 4, "alpha": 8}, "pissa": {"r": 4, "alpha": 8, "pissa_niter": None}, "paca": {"r": 4, "alpha": 8},
        "lift": {"r": 4, "alpha": 8, "lift_update_interval": 1}, "hft": {}}


@pytest.mark.parametrize("method", ["lora", "pissa", "paca", "lift", "hft"])
def test_reference_policy_is_the_original_model_before_and_after_training(tmp_path, method, learner_only_gppo):
    """PiSSA's frozen base is the residual W - s B0 A0, so 'adapter disabled' is not the original
    model; its reference adapter (B0, A0) restores it. LoRA's reference is the adapter disabled;
    PaCA's and LIFT's the frozen base with the original entries; HFT's the initial trained half.
    LIFT re-selects its entries after every step here (DeepSpeed ZeRO stage 0; the others stage 2)."""
    cfg = tiny_config(tmp_path, method, algorithm={"name": LEARNER_ONLY_GPPO.name, "group_size": 4, "kl_coef": 0.1},
                      peft={"method": method, **PEFT[method]},
                      learner={"zero_stage": 0 if method == "lift" else 2}, train={"lr": 2e-2})
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        probe = held_out_probe(ctl)
        before = ctl.learners.call_one(0, "token_logprobs", probe, reference=True)
        for _ in range(2):
            ctl.optimize(synthetic_rollout_rows(ctl))
        after = ctl.learners.call_one(0, "token_logprobs", probe, reference=True)
        policy = ctl.learners.call_one(0, "token_logprobs", probe)
    finally:
        ctl.close()
    original = original_model_logprobs(cfg, probe)
    torch.testing.assert_close(before, original, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, original, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(policy, original, atol=1e-3), "training should have moved the policy"


@pytest.mark.parametrize("method", ["lora", "pissa", "paca", "lift"])
def test_merged_weights_are_the_policy_the_learner_trains(method):
    """sync.weights=merged ships effective_weights(model): loaded into a plain copy of the base model
    (checkpoint naming), it computes the adapted model's logits."""
    from transformers import AutoModelForCausalLM

    from rlft.data.model_config import ModelConfig
    from rlft.data.models import resolve_model
    from rlft.peft import PEFT_METHODS

    path = resolve_model(ModelConfig(name="tiny"))
    cls = PEFT_METHODS[method]
    peft = cls(cls.config_cls(r=4, alpha=8, **({"pissa_niter": None} if method == "pissa" else {})))
    model = peft.wrap(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), seed=0, with_reference=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B.default" in name or name.endswith((".paca", ".values")):
                param.add_(0.05 * torch.randn_like(param))  # a trained-looking adapter
    weights = peft.effective_weights(model)
    assert not any("lora_" in name or "base_layer" in name or name.endswith((".paca", ".values")) for name in weights)
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(weights, strict=False)
    tied = plain.config.tie_word_embeddings  # a tied head is the embedding, shipped once (as checkpoints do)
    assert not unexpected and set(missing) == ({"lm_head.weight"} if tied else set())
    ids = torch.tensor([[1, 53, 30, 4, 24, 27, 15, 23, 28, 99]])
    with torch.no_grad():
        adapted, merged, base = model(ids).logits, plain(ids).logits, AutoModelForCausalLM.from_pretrained(path)(ids).logits
    assert torch.allclose(merged, adapted, atol=1e-5)
    assert (merged - base).abs().max() > 1e-2  # the adapter does move the policy
