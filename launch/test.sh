#!/usr/bin/env bash
# README command 2: set everything up, then run the test suite (GPU-marked tests skip on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline} RAY_DEDUP_LOGS=0
exec .venv/bin/python -m pytest "$@"
