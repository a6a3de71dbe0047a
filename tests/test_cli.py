"""The command line: errors are one clear line and exit code 2; doctor checks the stack."""

import subprocess
import sys

from rlft.cli import main


def test_config_error_is_reported_without_traceback(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: {name: arith}\nalgorithm: {name: sft}\ntrain: {stepz: 3}\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlft: error: ") and "unknown key 'train.stepz'" in err and "did you mean 'steps'" in err


def test_eval_reports_a_missing_checkpoint(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: {name: arith, eval_size: 4}\nalgorithm: {name: sft}\n")
    assert main(["eval", str(recipe), "--checkpoint", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_doctor_reports_working_stack():
    out = subprocess.run([sys.executable, "-m", "rlft.cli", "doctor"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("torch", "deepspeed", "ray", "vllm"):
        assert name in out.stdout
    assert out.stdout.count("ok (") == 3


def test_a_run_that_cannot_start_is_one_line_before_any_role(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run: {{output_dir: {tmp_path}/runs}}\nruntime: {{mode: inline}}\ntask: {{name: arith}}\n"
                      "algorithm: {name: gppo}\nrollout: {max_new_tokens: 60}\ntrain: {max_length: 64}\n")
    assert main(["train", str(recipe), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlft: error: train example 0: prompt of ") and "does not fit train.max_length (64)" in err
    assert not (tmp_path / "runs").exists()


def test_algorithms_command_lists_every_registered_algorithm(capsys):
    from rlft.algorithms import ALGORITHMS

    assert main(["algorithms"]) == 0
    out = capsys.readouterr().out
    for name in ALGORITHMS.names():
        assert name in out, name
    assert "TPOTrainer" in out  # tpo says it is not TRL's (triple preference optimization)
    assert all(ALGORITHMS[name].summary for name in ALGORITHMS.names())
    for name in ("gspo_token", "cispo", "rloo", "reinforce_pp_baseline"):  # gppo's losses and estimators
        assert name in out, name
