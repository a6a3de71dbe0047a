"""DRAKES in the loop: the loss and its normalisation, the sampling source, the mdlm model family
(probe parity between a learner and a diffusion generator, payload loading), and an end-to-end
run of the recipe on real DeepSpeed ranks, diffusion generators and a reward actor."""

from __future__ import annotations

import json

import pytest
import torch

from rlft.algorithms.base import StepCounts
from rlft.algorithms.drakes import DrakesConfig, alpha_at, drakes_loss, micro_batch_loss
from rlft.config import load_config
from rlft.data.dna import decode
from rlft.diffusion.model import MDLM, MDLMConfig
from rlft.families import family_name
from rlft.families.mdlm import MaskedDiffusion
from rlft.roles.diffusion_generator import DiffusionGeneratorActor
from rlft.samples import latest, read_samples
from rlft.sources import SourceContext
from rlft.sources.sampling import SamplingSource
from rlft.sync.payload import DensePayload


def test_drakes_loss_is_minus_reward_plus_alpha_kl_over_the_step_sequences():
    rewards, kl = torch.tensor([1.0, 3.0]), torch.tensor([10.0, 30.0])
    # (-1 + 0.1*10) + (-3 + 0.1*30) = 0 -> 0 / 4; with alpha 0: -4 / 4 = -1
    assert float(drakes_loss(rewards, kl, 0.1, 4.0)) == pytest.approx(0.0)
    assert float(drakes_loss(rewards, kl, 0.0, 4.0)) == pytest.approx(-1.0)


def test_alpha_ramps_linearly_over_the_warmup_then_stays():
    cfg = DrakesConfig(alpha=0.01, alpha_warmup_steps=10)
    assert [alpha_at(cfg, s) for s in (0, 5, 10, 50)] == pytest.approx([0.0, 0.005, 0.01, 0.01])
    assert alpha_at(DrakesConfig(alpha=0.01), 0) == 0.01


class _Policy:
    """The learner's view of a model (rlft.roles.learner._Policy) over a plain module."""

    def __init__(self, model, reference):
        self.model, self._reference, self.config = model, reference, model.config

    def __call__(self, x):
        return self.model(x)

    def reference(self, x):
        with torch.no_grad():
            return self._reference(x)


class _Oracle(torch.nn.Module):
    """A reward that counts G and C (differentiable in the one-hot input)."""

    def reward(self, onehot):
        return onehot[..., 1:3].sum((-1, -2))


def _tiny_mdlm(seed=0, length=12):
    torch.manual_seed(seed)
    return MDLM(MDLMConfig(length=length, hidden=16, blocks=2, kernel=3, dilations=(1, 2)))


def test_micro_batch_loss_reaches_theta_through_the_relaxed_steps_and_not_without_them(monkeypatch):
    import rlft.algorithms.drakes as drakes

    monkeypatch.setattr(drakes, "_oracle", lambda name, device: _Oracle())
    model = _tiny_mdlm()
    policy = _Policy(model, _tiny_mdlm(seed=1))
    batch = {"seeds": torch.tensor([7, 8, 9, 10])}
    counts = StepCounts(num_tokens=4.0, num_sequences=4.0)
    loss, metrics = micro_batch_loss(policy, batch, DrakesConfig(steps=6, truncate_steps=3, alpha=0.1), counts)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert metrics["sequences"] == 4.0 and metrics["kl_sum"] > 0.0
    # the same seeds draw the same sequences: the reward does not depend on the KL settings
    again, metrics_no_kl = micro_batch_loss(policy, batch, DrakesConfig(steps=6, truncate_steps=3, alpha=0.0), counts)
    assert metrics_no_kl["reward_sum"] == pytest.approx(metrics["reward_sum"])
    assert metrics_no_kl["kl_sum"] == 0.0
    model.zero_grad()
    frozen, _ = micro_batch_loss(policy, batch, DrakesConfig(steps=6, truncate_steps=0, alpha=0.0), counts)
    assert not frozen.requires_grad  # K = 0 and alpha = 0 -> nothing reaches theta


def test_sampling_source_seeds_depend_on_the_iteration_only():
    cfg = load_config("configs/drakes_dna.yaml", ["train.batch_size=4", "train.micro_batch_size=2"])
    from rlft.algorithms import ALGORITHMS

    source = SamplingSource(SourceContext(cfg, ALGORITHMS["drakes"], None, None, False, [], {}))
    first, _ = source.next_batch(3, 0)
    assert first == source.next_batch(3, 5)[0] and len(first) == 4
    assert {r["seed"] for r in first}.isdisjoint(r["seed"] for r in source.next_batch(4, 0)[0])


def test_an_mdlm_folder_is_its_own_family_and_a_generator_matches_the_learner_after_a_payload(tmp_path):
    folder = tmp_path / "base"
    _tiny_mdlm(length=200).save_pretrained(folder)
    assert family_name(folder) == "mdlm"
    cfg = load_config("configs/drakes_dna.yaml", ["learner.device=cpu"])
    generator = DiffusionGeneratorActor(cfg, 0, str(folder), "float32", None, 0)
    generator.setup()
    trained = _tiny_mdlm(seed=1, length=200)  # other weights, as after an update
    payload = DensePayload.build(1, dict(trained.named_parameters()))
    assert generator.load_weights(payload) == payload.fingerprint
    family = MaskedDiffusion()

    class Ctl:  # what the family's probe reads of the controller
        eval_examples = [type("E", (), {"response": "ACGT" * 50})()]

    probe = family.probe(Ctl)
    assert (probe["xt"] == 4).float().mean().item() == pytest.approx(0.5, abs=0.1)
    expected = family.probe_logprobs(trained.eval(), probe)
    assert torch.equal(torch.tensor(generator.probe_logprobs(probe)), expected)
    # base weights score differently (what the parity probe catches when a load is skipped)
    assert not torch.allclose(family.probe_logprobs(generator.base, probe), expected)
    sampled = generator.sample(6, seed=3, steps=8, batch_size=4)
    assert sampled["version"] == 1 and len(sampled["sequences"]) == 6
    assert all(len(s) == 200 and set(s) <= set("ACGT") for s in sampled["sequences"])
    assert sampled == generator.sample(6, seed=3, steps=8, batch_size=4)  # seeded
    lls = generator.log_likelihood(sampled["sequences"][:2], steps=4, seed=0)
    assert len(lls) == 2 and all(-400 < v < 0 for v in lls)


def test_a_payload_that_names_a_missing_tensor_is_refused_by_name(tmp_path):
    folder = tmp_path / "base"
    _tiny_mdlm(length=200).save_pretrained(folder)
    generator = DiffusionGeneratorActor(load_config("configs/drakes_dna.yaml", []), 0, str(folder), "float32", None, 0)
    generator.setup()
    with pytest.raises(KeyError, match="not_a_weight"):
        generator.load_weights(DensePayload.build(1, {"not_a_weight": torch.zeros(2)}))


def test_drakes_refuses_a_vllm_generator_by_name():
    from rlft.algorithms import ALGORITHMS
    from rlft.control.validation import check_run
    from rlft.errors import RunError
    from rlft.peft import PEFT_METHODS

    cfg = load_config("configs/drakes_dna.yaml", ["runtime.roles.generator=vllm"])
    with pytest.raises(RunError, match="runtime.roles.generator=diffusion"):
        check_run(cfg, ALGORITHMS["drakes"], PEFT_METHODS["full"])


# ----------------------------------------------------------------------------- end to end
SMALL_MDLM = ["model.mdlm.hidden=32", "model.mdlm.blocks=4", "tracking.wandb=disabled", "tracking.plots=false"]


def _eval_rows(run_dir, key):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if key in row]


@pytest.fixture(scope="module")
def pretrained_mdlm(tmp_path_factory):
    """The pretraining recipe, shortened: a small MDLM, one inline learner rank, 80 steps."""
    from rlft.control import train

    out = tmp_path_factory.mktemp("pretrain")
    cfg = load_config("configs/mdlm_dna_pretrain.yaml", [
        *SMALL_MDLM, f"run.output_dir={out}", "runtime.mode=inline", "learner.count=1", "train.steps=80",
        "train.batch_size=64", "train.micro_batch_size=32", "train.eval_every=0", "train.warmup_steps=5",
        "eval.num_examples=32", "diffusion.sample_steps=16"])
    summary = train(cfg, show_progress=False)
    return summary


def test_mdlm_pretraining_lowers_the_held_out_nelbo(pretrained_mdlm):
    from pathlib import Path

    evals = _eval_rows(Path(pretrained_mdlm["run_dir"]), "eval/nelbo_per_token")
    start, end = evals[0]["eval/nelbo_per_token"], evals[-1]["eval/nelbo_per_token"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 80
    assert start > 1.37 and end < start - 0.02  # from about uniform (ln 4 = 1.386) to below it
    assert family_name(pretrained_mdlm["checkpoint"]) == "mdlm"


@pytest.mark.long
def test_drakes_recipe_raises_the_evaluation_oracle_score_with_verified_syncs(pretrained_mdlm, tmp_path):
    """configs/drakes_dna.yaml in local mode (Ray actors: 2 DeepSpeed ranks, a diffusion generator,
    a reward actor with the held-out oracle), shortened: the evaluation oracle's median score and
    mean reward rise over the pretrained model's, every sync is fingerprinted and parity-probed."""
    from rlft.control import train

    cfg = load_config("configs/drakes_dna.yaml", [
        *SMALL_MDLM, f"run.output_dir={tmp_path}", f"model.name={pretrained_mdlm['checkpoint']}",
        "warm_start.recipe=null", "generator.count=1", "train.steps=12", "train.batch_size=16",
        "train.micro_batch_size=8", "train.lr=3e-3", "train.eval_every=0", "algorithm.steps=16",
        "algorithm.truncate_steps=4", "eval.num_examples=64", "diffusion.sample_steps=16", "diffusion.loglik_steps=8"])
    summary = train(cfg, show_progress=False)
    run_dir = tmp_path / "drakes_dna"
    start, end = _eval_rows(run_dir, "eval/pred_activity")
    print({k: (round(start[k], 3), round(end[k], 3)) for k in start if k.startswith("eval/")})
    assert end["eval/pred_activity"] > start["eval/pred_activity"] + 0.2
    assert end["eval/reward"] > start["eval/reward"]
    trained = _eval_rows(run_dir, "train/oracle_reward")
    assert [r["sync/version"] for r in trained] == [float(v) for v in range(1, 13)]
    assert all(r["sync/parity_max_abs_diff"] < 1e-4 for r in trained)
    assert summary["policy_version"] == 12 and summary["learner_ranks"] == 2
    placement = json.loads((run_dir / "placement.json").read_text())
    assert len(placement["generator"]) == 1 and placement["mode"] == "local"


def test_drakes_resume_is_exact_and_the_generator_gets_the_resumed_policy(pretrained_mdlm, tmp_path):
    """Inline, 4 steps stopped after 2 and resumed: the same metrics (evaluation by the generator
    included) and the same final weights, bit for bit."""
    from tests.test_resume import assert_same_run, stop_and_resume

    def make(name, **extra):
        overrides = [*SMALL_MDLM, f"run.output_dir={tmp_path}", f"run.name={name}", "runtime.mode=inline",
                     f"model.name={pretrained_mdlm['checkpoint']}", "warm_start.recipe=null", "learner.count=1",
                     "generator.count=1", "train.steps=4", "train.batch_size=8", "train.micro_batch_size=4",
                     "train.eval_every=2", "algorithm.steps=8", "algorithm.truncate_steps=2", "eval.num_examples=16",
                     "diffusion.sample_steps=8", "diffusion.loglik_steps=4"]
        overrides += [f"{key}={value}" for key, value in extra.items()]
        return load_config("configs/drakes_dna.yaml", overrides)

    whole, resumed, summary = stop_and_resume(make, at=2)
    assert summary["resumed_from"].endswith("step_2")
    assert_same_run(whole, resumed)
    # DRAKES's samples to read are its evaluation sequences with their oracle scores (rlft.samples)
    samples = {run: [(r["step"], r["index"], r["sequence"], r["rewards"]) for r in latest(read_samples(run))]
               for run in (whole, resumed)}
    assert samples[whole] == samples[resumed]
    assert [s[0] for s in samples[whole]] == [0] * 4 + [2] * 4 + [4] * 4 and "dna_oracle" in samples[whole][0][3]
