"""PaCA, LIFT and HFT weights reaching real vLLM generators: PaCA as a LoRA, LIFT as sparse entries,
HFT as whole tensors; after every sync the generator's log-probs match the learner's."""

import pytest

from rlft.control import Controller
from tests.helpers import assert_probe_catches_a_skipped_load, moving_rows, rl_config

METHODS = {
    "paca": ({"method": "paca", "r": 4, "alpha": 8}, "lora"),
    "lift": ({"method": "lift", "r": 4, "lift_update_interval": 2}, "sparse"),
    "hft": ({"method": "hft"}, "partial"),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_sparse_and_partial_weights_reach_the_generator(tmp_path, method, monkeypatch):
    peft, kind = METHODS[method]
    cfg = rl_config(tmp_path, method, peft=peft, learner={"zero_stage": 0}, train={"lr": 1e-2})
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        generator = ctl.roles["generator"].members[0]
        rows = moving_rows(ctl)
        before = ctl.learners.call_one(0, "token_logprobs", ctl.sync.probe)[0]
        sizes, refreshes = [], 0
        for _ in range(3):  # LIFT re-selects its entries after step 2: the union since the last sync ships
            refreshes += ctl.optimize(rows)[0].get("peft/mask_refreshes", 0)
            found = ctl.sync.publish()
            assert generator.weights.kind == kind
            assert found["sync/parity_max_abs_diff"] < 1e-3, found
            sizes.append(found["sync/bytes"])
        assert refreshes == (1 if method == "lift" else 0)
        moved = float((ctl.learners.call_one(0, "token_logprobs", ctl.sync.probe)[0] - before).abs().max())
        assert moved > 1e-2, "the updates should move the policy"
        full_model = sum(p.numel() for p in ctl.learners.members[0].engine.module.parameters()) * 4
        assert max(sizes) < 0.75 * full_model, (sizes, full_model)  # never the whole model
        assert_probe_catches_a_skipped_load(ctl, rows, monkeypatch)
    finally:
        ctl.close()
