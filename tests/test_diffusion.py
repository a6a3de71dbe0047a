"""Masked diffusion (MDLM) over DNA: schedule, corruption, NELBO, reverse step, sampler, checkpoints
(docs/algorithms.md#mdlm)."""

import json
import math

import pytest
import torch

from rlft.diffusion import mdlm
from rlft.diffusion.model import MDLM, NEG_INF, MDLMConfig, is_mdlm_folder, subs_log_probs
from rlft.diffusion.schedule import LogLinearSchedule

MASK = 4
L = 16
TINY = dict(length=L, hidden=32, blocks=4, kernel=3, dilations=(1, 2, 4, 8))
ACGT = torch.tensor([0, 1, 2, 3] * (L // 4))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed: int = 0, **overrides) -> MDLM:
    torch.manual_seed(seed)
    return MDLM(MDLMConfig(**{**TINY, **overrides}))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def train_on_acgt(steps: int = 100) -> tuple[MDLM, list[float]]:
    model = tiny_model()
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    data, g, losses = ACGT.repeat(32, 1), gen(1), []
    for _ in range(steps):
        loss = mdlm.nelbo(model, data, LogLinearSchedule(), g).mean() / L
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.fixture(scope="module")
def trained():
    return train_on_acgt()


# -------------------------------------------------------------------------------------- schedule
def test_schedule_values_by_hand():
    s = LogLinearSchedule(eps=1e-3)
    assert s.move_chance(0.5).item() == pytest.approx(0.4995)
    assert s.alpha(0.5).item() == pytest.approx(0.5005)
    assert s.sigma(0.5).item() == pytest.approx(-math.log(0.5005))
    assert s.dsigma(0.5).item() == pytest.approx(0.999 / 0.5005)
    assert s.alpha(1.0).item() == pytest.approx(1e-3)          # alpha(1) = eps: sigma stays finite
    t = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    # the NELBO weight dsigma / expm1(sigma) is exactly 1/t for the log-linear schedule
    torch.testing.assert_close(s.dsigma(t) / torch.expm1(s.sigma(t)), 1.0 / t)


def test_corrupt_masks_expected_fraction():
    x0 = torch.zeros(64, 500, dtype=torch.long)
    xt = mdlm.corrupt(x0, torch.full((64,), 0.3), LogLinearSchedule(), gen())
    assert (xt == MASK).float().mean().item() == pytest.approx(0.3 * 0.999, abs=0.01)
    assert set(xt.unique().tolist()) <= {0, MASK}               # unmasked positions keep x0
    per_seq = mdlm.corrupt(x0[:2], torch.tensor([0.0, 1.0]), LogLinearSchedule(), gen())
    assert (per_seq[0] != MASK).all() and (per_seq[1] == MASK).float().mean() > 0.99


def test_antithetic_times_are_stratified():
    t = mdlm.sample_times(8, gen(), eps_t=1e-3, antithetic=True)
    strata = ((t - 1e-3) / (1 - 1e-3) * 8).floor().long().sort().values
    assert torch.equal(strata, torch.arange(8))                 # one t in each eighth of [eps, 1]
    plain = mdlm.sample_times(1000, gen(), eps_t=0.1, antithetic=False)
    assert plain.min() >= 0.1 and plain.max() <= 1.0


# ------------------------------------------------------------------------------------ reverse step
def test_reverse_step_probs_hand_computed_one_position():
    """p_theta = (.1, .2, .3, .4), alpha_t = .2, alpha_s = .6:
    tokens p (alpha_s - alpha_t)/(1 - alpha_t) = p * .5; MASK (1 - alpha_s)/(1 - alpha_t) = .5."""
    log_p = torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.4, 0.0]]])).clamp_min(NEG_INF)
    probs = mdlm.reverse_step_probs(log_p, torch.tensor([[MASK]]), 0.2, 0.6)
    torch.testing.assert_close(probs, torch.tensor([[[0.05, 0.1, 0.15, 0.2, 0.5]]]))


def test_reverse_step_rows_sum_to_one_and_unmasked_copy():
    model = tiny_model()
    xt = mdlm.corrupt(ACGT.repeat(4, 1), torch.full((4,), 0.6), LogLinearSchedule(), gen())
    probs = mdlm.reverse_step_probs(model.log_probs(xt).detach(), xt, torch.full((4,), 0.3), torch.full((4,), 0.5))
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, L))
    unmasked = xt != MASK
    torch.testing.assert_close(probs[unmasked], torch.nn.functional.one_hot(xt[unmasked], 5).float())
    assert (probs[~unmasked][:, :MASK] > 0).all()


# ---------------------------------------------------------------------------------------- model
def test_model_soft_input_matches_ids_and_subs():
    model = tiny_model()
    ids = mdlm.corrupt(ACGT.repeat(3, 1), torch.full((3,), 0.5), LogLinearSchedule(), gen())
    onehot = torch.nn.functional.one_hot(ids, 5).float()
    torch.testing.assert_close(model(ids), model(onehot))
    log_p = model.log_probs(ids)
    assert (log_p[..., MASK] <= NEG_INF / 2).all()                           # never predicts MASK
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(3, L))
    unmasked = ids != MASK
    assert (log_p[unmasked].argmax(-1) == ids[unmasked]).all()              # carry-over
    assert (log_p[unmasked].max(-1).values == 0).all()
    soft = model.log_probs(onehot)                                           # soft: no carry-over forcing
    torch.testing.assert_close(soft, subs_log_probs(model(onehot), onehot))
    assert (soft[unmasked].max(-1).values < 0).all()


def test_nelbo_drops_when_training_on_a_toy_set(trained):
    _, losses = trained
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 1.0                              # ~log 4 per token for an untrained model
    assert last < 0.05 * first, (first, last)


def test_sampling_reproduces_constant_training_sequence(trained):
    model, _ = trained
    samples = mdlm.sample(model, num=16, steps=16, schedule=LogLinearSchedule(), generator=gen(3), batch_size=5)
    assert samples.shape == (16, L) and samples.dtype == torch.long
    # p_theta is ~0.999 sure of every token, so the odd token may still be sampled wrong
    assert (samples == ACGT).float().mean() > 0.98, samples
    assert (samples == ACGT).all(-1).sum() >= 13, samples
    assert torch.equal(samples.mode(0).values, ACGT)


def test_sample_is_deterministic_given_seed():
    model, s = tiny_model(), LogLinearSchedule()
    a = mdlm.sample(model, 6, 8, s, gen(7))
    b = mdlm.sample(model, 6, 8, s, gen(7))
    c = mdlm.sample(model, 6, 8, s, gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((a >= 0) & (a < MASK)).all()


def test_approx_log_likelihood_uniform_model_and_trained_model(trained):
    """A model with constant logits has log p = -log 4 at every masked position; the estimate is
    -log 4 * sum_i w_i #masked_i, whose expectation is -log 4 * L * (alpha(t_T) - alpha(1))."""
    uniform = lambda x: torch.zeros(*x.shape[:2], 5)                      # noqa: E731
    x0 = torch.randint(0, 4, (64, 200), generator=gen(0))
    s = LogLinearSchedule()
    ll = mdlm.approx_log_likelihood(uniform, x0, steps=32, schedule=s, generator=gen(1), batch_size=16)
    expected = -math.log(4) * 200 * (s.alpha(1e-5) - s.alpha(1.0)).item()
    assert ll.shape == (64,)
    assert ll.mean().item() == pytest.approx(expected, rel=0.02)
    model, _ = trained
    good = mdlm.approx_log_likelihood(model, ACGT.repeat(4, 1), steps=32, schedule=s, generator=gen(2))
    bad = mdlm.approx_log_likelihood(model, ACGT.flip(0).repeat(4, 1), steps=32, schedule=s, generator=gen(2))
    assert (good > -2.0).all() and (bad < good - 10).all()


# ---------------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip(tmp_path):
    model = tiny_model(seed=3)
    model.save_pretrained(tmp_path / "safe")
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert json.loads((tmp_path / "safe" / "config.json").read_text())["model_type"] == "mdlm"
    assert (tmp_path / "safe" / "model.safetensors").is_file()
    x = mdlm.corrupt(ACGT.repeat(2, 1), torch.full((2,), 0.5), LogLinearSchedule(), gen())
    for folder in ("safe", "bin"):
        assert is_mdlm_folder(tmp_path / folder)
        loaded = MDLM.from_pretrained(tmp_path / folder)
        assert loaded.config == model.config
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not is_mdlm_folder(tmp_path) and not is_mdlm_folder(tmp_path / "missing")


def test_load_refuses_mismatching_checkpoint(tmp_path):
    tiny_model(hidden=32).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden": 16}))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'embedding\.weight' has shape \(5, 32\)"):
        MDLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "blocks": 5}))
    with pytest.raises(ValueError, match=r"model\.safetensors: missing tensor 'blocks\.4\."):
        MDLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match="not an MDLM folder"):
        MDLM.from_pretrained(tmp_path)
