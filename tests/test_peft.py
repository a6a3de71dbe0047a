"""PEFT methods as the learner uses them: the reference policy each one provides."""

import pytest
import torch

from rlft.controller import Controller
from tests.helpers import (
    LEARNER_ONLY_GPPO,
    held_out_probe,
    original_model_logprobs,
    synthetic_rollout_rows,
    tiny_config,
)


@pytest.mark.parametrize("method", ["lora", "pissa"])
def test_reference_policy_is_the_original_model_before_and_after_training(tmp_path, method, learner_only_gppo):
    """PiSSA's frozen base is the residual W - s B0 A0, so 'adapter disabled' is not the original
    model; its reference adapter (B0, A0) restores it. LoRA's reference is the adapter disabled."""
    cfg = tiny_config(tmp_path, method, algorithm={"name": LEARNER_ONLY_GPPO.name, "group_size": 4, "kl_coef": 0.1},
                      peft={"method": method, "r": 4, "alpha": 8, "pissa_niter": None}, train={"lr": 2e-2})
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
