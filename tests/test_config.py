"""Config loading: defaults, overrides, and errors that name the key, the file and a fix."""

from pathlib import Path

import pytest

from rlft.config import ConfigError, dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


BASE = """
task: {name: arith}
algorithm: {name: sft}
"""


def test_every_recipe_in_configs_loads_and_starts_with_its_command():
    recipes = sorted((ROOT / "configs").glob("*.yaml"))
    assert recipes, "no recipes found"
    for recipe in recipes:
        first = recipe.read_text().splitlines()[0]
        assert first.startswith("# rlft ") and recipe.name in first, f"{recipe.name}: first line must give its command"
        load_config(recipe)


def test_defaults_and_dotted_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), ["train.lr=1e-4", "learner.count=1", "task.digits=3"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.learner.count == 1 and cfg.task.digits == 3
    assert cfg.learner.zero_stage == 2  # default, from the one place it is defined
    assert "lr: 0.0001" in dump_config(cfg)


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = _write(tmp_path, BASE + "train: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "unknown key 'train.lrr'" in msg and "did you mean 'lr'" in msg


def test_unknown_key_in_named_section(tmp_path):
    path = _write(tmp_path, "task: {name: arith, digitz: 2}\nalgorithm: {name: sft}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'task.digitz' \(did you mean 'digits'\?\)"):
        load_config(path)


def test_wrong_type_names_key_and_value(tmp_path):
    path = _write(tmp_path, BASE + "train: {steps: ten}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "key 'train.steps'" in str(err.value) and "'ten'" in str(err.value) and str(path) in str(err.value)


def test_unknown_algorithm_task_and_model_names_suggest_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown algorithm name 'sfft'.*did you mean 'sft'"):
        load_config(_write(tmp_path, "task: {name: arith}\nalgorithm: {name: sfft}\n"))
    with pytest.raises(ConfigError, match=r"unknown task name 'arithm'.*did you mean 'arith'"):
        load_config(_write(tmp_path, "task: {name: arithm}\nalgorithm: {name: sft}\n"))
    with pytest.raises(ConfigError, match=r"unknown model name 'tiniy'.*did you mean 'tiny'"):
        load_config(_write(tmp_path, BASE + "model: {name: tiniy}\n"))


def test_override_errors_name_the_override(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(_write(tmp_path, BASE), ["train.lr"])
    with pytest.raises(ConfigError, match=r"with overrides train.nope=1\): unknown key 'train.nope'"):
        load_config(_write(tmp_path, BASE), ["train.nope=1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "task: [unclosed\n"))
