"""End-to-end SFT runs through the controller: run folder, modes, checkpoints."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlft.control import Controller, train
from rlft.data.collate import encode_sft, pad_rows
from rlft.data.models import resolve_model
from rlft.ops.logprobs import token_logprobs
from tests.helpers import tiny_config


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def test_inline_and_local_modes_give_the_same_loss_curve_and_full_run_folder(tmp_path):
    steps = {"steps": 4, "eval_every": 2}
    inline = train(tiny_config(tmp_path, "inline", train=steps), show_progress=False)
    local = train(
        tiny_config(tmp_path, "local", train=steps, runtime={"mode": "local"}, learner={"count": 2},
                    tracking={"wandb": "offline", "plots": True}),
        show_progress=False,
    )
    assert inline["learner_ranks"] == 1 and local["learner_ranks"] == 2
    curve_inline = _losses(tmp_path / "runs" / "inline")
    curve_local = _losses(tmp_path / "runs" / "local")
    assert len(curve_inline) == 4
    assert curve_local == pytest.approx(curve_inline, rel=1e-5)

    run = tmp_path / "runs" / "local"
    assert (run / "config.yaml").read_text().startswith("run:")
    assert (run / "train.log").stat().st_size > 0
    metrics = (run / "metrics.jsonl").read_text()
    assert '"eval/accuracy"' in metrics and '"perf/step_seconds"' in metrics
    assert {p.name for p in (run / "plots").glob("*.png")} >= {"train.png", "eval.png", "perf.png"}
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")), "no offline wandb run to sync"
    AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "final")  # full fine-tune -> HF folder


@pytest.mark.parametrize("method", ["lora", "pissa"])
def test_adapter_checkpoint_round_trip_through_peft(tmp_path, method):
    """The saved adapter, loaded on the *original* base with PeftModel.from_pretrained,
    reproduces the learner's log-probs (PiSSA is saved converted to a rank-2r LoRA)."""
    from peft import PeftModel

    exact = {"pissa_niter": None} if method == "pissa" else {}  # PiSSA: exact SVD
    cfg = tiny_config(tmp_path, method, peft={"method": method, "r": 4, "alpha": 8, **exact},
                      train={"lr": 2e-2})
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        for _ in range(2):
            ctl.learner_step(ctl.spec.build_rows(ctl.train_examples[:8], ctl.row_ctx)[0])
        ex = ctl.eval_examples[0]
        probe = pad_rows([encode_sft(ctl.tokenizer, ex.prompt, ex.response, 64, False)], ctl.tokenizer.pad_token_id)
        expected = ctl.learners.call_one(0, "token_logprobs", probe)
        ckpt = ctl.checkpoint("final")
    finally:
        ctl.close()
    base = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model))
    with torch.no_grad():
        base_lp = token_logprobs(base(input_ids=probe["input_ids"]).logits, probe["labels"])[0]
        model = PeftModel.from_pretrained(base, str(ckpt)).eval()
        loaded = token_logprobs(model(input_ids=probe["input_ids"]).logits, probe["labels"])[0]
    assert not torch.allclose(base_lp, expected, atol=1e-3), "training changed nothing"
    torch.testing.assert_close(loaded, expected, atol=2e-4, rtol=1e-4)
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert config["r"] == (8 if method == "pissa" else 4)
