#!/usr/bin/env bash
# README command 1: set everything up, then run the main job on the embedded tiny model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec .venv/bin/rlft train configs/gppo_tiny_arith.yaml "$@"
