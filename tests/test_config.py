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


# ----------------------------------------------------------------------------- peft: a named section
def test_each_peft_method_owns_its_config_section():
    import typing

    from rlft.peft import PEFT_METHODS

    for name in PEFT_METHODS:
        cls = PEFT_METHODS[name].config_cls
        first, info = next(iter(cls.model_fields.items()))
        assert first == "method" and typing.get_args(info.annotation) == (name,), name
        assert all(f.description for f in cls.model_fields.values()), name
    assert "r" not in PEFT_METHODS["full"].config_cls.model_fields
    assert "lift_update_interval" in PEFT_METHODS["lift"].config_cls.model_fields
    assert "lift_update_interval" not in PEFT_METHODS["lora"].config_cls.model_fields


def test_peft_section_is_validated_by_the_method_it_names(tmp_path):
    cfg = load_config(_write(tmp_path, BASE + "peft: {method: lift, r: 4, lift_update_interval: 0}\n"))
    assert (cfg.peft.method, cfg.peft.r, cfg.peft.lift_update_interval, cfg.peft.lift_filter_rank) == ("lift", 4, 0, None)
    assert "lift_update_interval: 0" in dump_config(cfg) and "hft_round" not in dump_config(cfg)
    default = load_config(_write(tmp_path, BASE))
    assert (default.peft.method, default.peft.r, default.peft.alpha) == ("lora", 8, 16.0)  # no peft section: lora
    with pytest.raises(ConfigError, match=r"unknown key 'peft.r'"):   # full has no adapter fields
        load_config(_write(tmp_path, BASE + "peft: {method: full, r: 4}\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'peft.lift_update_interval'"):
        load_config(_write(tmp_path, BASE + "peft: {method: lora, lift_update_interval: 3}\n"))
    with pytest.raises(ConfigError, match=r"unknown peft method 'lorra' at key 'peft.method' \(did you mean 'lora'\?\)"):
        load_config(_write(tmp_path, BASE + "peft: {method: lorra}\n"))


def test_peft_method_override_drops_the_recipe_keys_the_new_method_lacks(tmp_path):
    recipe = _write(tmp_path, BASE + "peft: {method: lora, r: 4, alpha: 8}\n")
    hft = load_config(recipe, ["peft.method=hft", "peft.hft_round=1"])
    assert hft.peft.method == "hft" and hft.peft.hft_round == 1 and "r" not in type(hft.peft).model_fields
    lift = load_config(recipe, ["peft.method=lift"])
    assert (lift.peft.r, lift.peft.alpha) == (4, 8.0)   # the keys LIFT takes stay
    with pytest.raises(ConfigError, match=r"unknown key 'peft.r'"):   # an explicit override is still checked
        load_config(recipe, ["peft.r=2", "peft.method=full"])


def test_lift_checks_its_own_zero_stage_rule(tmp_path):
    from rlft.peft import PEFT_METHODS

    path = _write(tmp_path, BASE + "peft: {method: lift}\n")
    with pytest.raises(ValueError, match=r"peft.lift_update_interval=200 steps .* ZeRO stage 2 .* learner.zero_stage=0"):
        PEFT_METHODS["lift"].validate(load_config(path))
    PEFT_METHODS["lift"].validate(load_config(path, ["learner.zero_stage=0"]))
    PEFT_METHODS["lift"].validate(load_config(path, ["peft.lift_update_interval=0"]))


def test_loading_a_config_imports_only_the_task_it_names():
    import subprocess
    import sys

    tasks = ["rlft.data.arith", "rlft.data.gsm", "rlft.data.rgym", "rlft.data.multihop", "rlft.data.dna_task"]
    code = (f"import sys; from rlft.config import load_config; load_config({str(ROOT / 'configs' / 'sft_tiny_arith.yaml')!r}); "
            f"print([m for m in {tasks!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "['rlft.data.arith']"
