"""PEFT methods as the learner uses them: the reference policy each one provides."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft.controller import Controller
from rlft.data.collate import encode_sft, pad_rows
from rlft.data.models import resolve_model
from rlft.ops.logprobs import token_logprobs
from tests.helpers import LEARNER_ONLY_GPPO, synthetic_rollout_rows, tiny_config


@pytest.mark.parametrize("method", ["lora", "pissa"])
def test_reference_policy_is_the_original_model_before_and_after_training(tmp_path, method, learner_only_gppo):
    """PiSSA's frozen base is the residual W - s B0 A0, so 'adapter disabled' is not the original
    model; its reference adapter (B0, A0) restores it. LoRA's reference is the adapter disabled."""
    cfg = tiny_config(tmp_path, method, algorithm={"name": LEARNER_ONLY_GPPO.name, "group_size": 4, "kl_coef": 0.1},
                      peft={"method": method, "r": 4, "alpha": 8, "pissa_niter": None}, train={"lr": 2e-2})
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        ex = ctl.eval_examples[0]
        probe = pad_rows([encode_sft(ctl.tokenizer, ex.prompt, ex.response, 64, False)], ctl.tokenizer.pad_token_id)
        before = ctl.learners.call_one(0, "token_logprobs", probe, reference=True)
        for _ in range(2):
            ctl.optimize(synthetic_rollout_rows(ctl))
        after = ctl.learners.call_one(0, "token_logprobs", probe, reference=True)
        policy = ctl.learners.call_one(0, "token_logprobs", probe)
    finally:
        ctl.close()
    base = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model))
    with torch.no_grad():
        original = token_logprobs(base(input_ids=probe["input_ids"]).logits, probe["labels"])[0]
    torch.testing.assert_close(before, original, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after, original, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(policy, original, atol=1e-3), "training should have moved the policy"
