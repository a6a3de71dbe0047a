"""The shipped DNA oracles (reward_models/dna/{ft,eval}) and their checkpoint checks."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from reward_models.dna_oracle import (
    CONFIG_FILE, SHIPPED, WEIGHTS_FILE, DnaOracle, OracleCheckpointError, OracleConfig, evaluate_oracle,
    load_oracle, reverse_complement,
)
from rlft.data.dna import HEPG2, encode, load_dna, one_hot

# Measured on the whole test split (python -m reward_models.train_dna_oracle): ft 0.700 / AUROC 0.915,
# eval 0.712 / 0.927. A 2000-sequence subset may differ by about 0.02; the bounds leave a margin.
MIN_ACCURACY = 0.65
MIN_AUROC = 0.88


@pytest.fixture(scope="module")
def test_subset():
    test = load_dna().subset(split="test")
    return test.select(list(range(0, len(test), len(test) // 2000))[:2000])


@pytest.mark.parametrize("name", ["ft", "eval"])
def test_shipped_oracles_classify_held_out_sequences(name, test_subset):
    oracle = load_oracle(name)
    assert not oracle.training and not any(p.requires_grad for p in oracle.parameters())
    result = evaluate_oracle(oracle, test_subset)
    assert result["accuracy"] > MIN_ACCURACY, result
    assert result["auroc"] > MIN_AUROC, result
    assert oracle.facts["test_accuracy"] > MIN_ACCURACY  # what training measured on the full split


def test_shipped_oracles_are_small_and_differ():
    for name in ("ft", "eval"):
        assert (SHIPPED / name / WEIGHTS_FILE).stat().st_size < 1_000_000
    ft, ev = load_oracle("ft"), load_oracle("eval")
    assert ft.facts["trained_on"] != ev.facts["trained_on"]
    assert not torch.equal(ft.conv1.weight, ev.conv1.weight)


def test_reward_is_differentiable_in_the_one_hot_input():
    oracle = load_oracle("ft")
    x = one_hot(encode(load_dna().subset("test", "HepG2").sequences[:4])).requires_grad_(True)
    reward = oracle.reward(x)
    assert reward.shape == (4,)
    reward.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0


def test_reward_definitions_and_strand_symmetry():
    torch.manual_seed(0)
    x = one_hot(torch.randint(0, 4, (3, 200)))
    oracle = DnaOracle(OracleConfig(reward="log_odds")).eval()
    p = torch.softmax(oracle(x), dim=1)[:, HEPG2]
    torch.testing.assert_close(oracle.reward(x), torch.log(p) - torch.log1p(-p), rtol=1e-4, atol=1e-5)
    oracle.config.reward = "logit"
    torch.testing.assert_close(oracle.reward(x), oracle(x)[:, HEPG2])
    torch.testing.assert_close(oracle(reverse_complement(x)), oracle(x))


def test_wrong_input_shape_is_refused():
    with pytest.raises(ValueError, match=r"one-hot input \[B, 200, 4\], got \(2, 4, 200\)"):
        DnaOracle()(torch.zeros(2, 4, 200))


def test_save_load_round_trip(tmp_path):
    oracle = DnaOracle(OracleConfig(channels=8, kernel_sizes=(5, 3), reward="logit")).eval()
    oracle.save(tmp_path, {"seed": 3})
    loaded = DnaOracle.load(tmp_path)
    assert loaded.config == oracle.config and loaded.facts == {"seed": 3}
    x = one_hot(torch.randint(0, 4, (2, 200)))
    torch.testing.assert_close(loaded(x), oracle(x))


def test_mismatched_checkpoint_is_refused_by_tensor_name(tmp_path):
    folder = tmp_path / "eval"
    shutil.copytree(SHIPPED / "eval", folder)
    config_path = folder / CONFIG_FILE
    raw = json.loads(config_path.read_text())
    raw["config"]["channels"] = 128
    config_path.write_text(json.dumps(raw))
    with pytest.raises(OracleCheckpointError) as err:
        DnaOracle.load(folder)
    message = str(err.value)
    assert message.startswith(f"{folder / WEIGHTS_FILE}: ")
    assert "tensor 'conv1.weight' has shape (64, 4, 11) but config.json gives (128, 4, 11)" in message


def test_missing_and_unexpected_tensors_are_listed(tmp_path):
    DnaOracle(OracleConfig(channels=8, kernel_sizes=(5, 3, 3))).save(tmp_path)
    raw = json.loads((tmp_path / CONFIG_FILE).read_text())
    raw["config"]["kernel_sizes"] = [5, 3]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(OracleCheckpointError, match=r"unexpected tensor\(s\) \['conv3.bias', 'conv3.weight'\]"):
        DnaOracle.load(tmp_path)
    raw["config"]["kernel_sizes"] = [5, 3, 3, 3]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(OracleCheckpointError, match=r"missing tensor\(s\) \['conv4.bias', 'conv4.weight'\]"):
        DnaOracle.load(tmp_path)


@pytest.mark.parametrize("missing", [WEIGHTS_FILE, CONFIG_FILE])
def test_missing_file_is_named(tmp_path, missing):
    shutil.copytree(SHIPPED / "ft", tmp_path / "ft")
    (tmp_path / "ft" / missing).unlink()
    with pytest.raises(OracleCheckpointError, match=f"{tmp_path / 'ft' / missing}: missing"):
        load_oracle(tmp_path / "ft")


def test_unknown_config_key_is_named(tmp_path):
    DnaOracle(OracleConfig(channels=8)).save(tmp_path)
    raw = json.loads((tmp_path / CONFIG_FILE).read_text())
    raw["config"]["chanels"] = 8
    (tmp_path / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(OracleCheckpointError, match=r"config.json: unknown config key\(s\) \['chanels'\]"):
        DnaOracle.load(tmp_path)
