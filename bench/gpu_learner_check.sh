#!/usr/bin/env bash
# GPU learner check (bench/gpu_learner_check.py): DeepSpeed + PEFT in bf16 with NCCL on one CUDA GPU,
# inline, 3 SFT and 3 GPPO learner steps, compared with the CPU reference in
# bench/data/gpu_learner_check_cpu.json. Needs torch, transformers, peft, deepspeed and rlft's
# pure-Python dependencies (pydantic, pyyaml, rich), in a checkout (it reuses tests/helpers.py); no vLLM,
# no Ray. Says so plainly when no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" bench/gpu_learner_check.py "$@"
