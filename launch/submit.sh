#!/usr/bin/env bash
# Submit a recipe to a Ray cluster as a Ray job:  launch/submit.sh RECIPE [key=value ...]
#
#   RAY_ADDRESS    the cluster's dashboard, e.g. http://127.0.0.1:8265 (default: that one)
#   RLFT_STORAGE   an absolute folder every node mounts at the same path; becomes runtime.storage
#                  (run folders and the model cache go there; or pass runtime.storage=... yourself)
#   RLFT_PYTHON    the Python on the cluster's nodes that has rlft's dependencies (default: python)
#   RLFT_JOB_ID    the job's submission id (default: rlft-<recipe>-<time>)
#   RLFT_STOP_WAIT_S  seconds `ray job stop` waits after its SIGTERM before it kills (default 300),
#                  so the run can write its step checkpoint
#
# The job's working directory is this checkout (without .venv, runs, .git, caches, bench/results);
# Ray copies it to every node, so the nodes run this code. WANDB_*, HF_* and RLFT_CACHE variables that
# are set here are passed to the job. Token auth: export RAY_AUTH_MODE=token and the cluster's token
# (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN) before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: launch/submit.sh RECIPE [key=value ...]" >&2
  exit 2
fi
recipe=$1
shift
[ -f "$recipe" ] || { echo "submit: recipe $recipe not found" >&2; exit 2; }
RAY=${RAY:-ray}
command -v "$RAY" >/dev/null || RAY=.venv/bin/ray
export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
job_id=${RLFT_JOB_ID:-rlft-$(basename "$recipe" .yaml)-$(date +%Y%m%d-%H%M%S)}
overrides=(runtime.mode=cluster)
[ -n "${RLFT_STORAGE:-}" ] && overrides+=("runtime.storage=$RLFT_STORAGE")

runtime_env=$(python3 - <<'PY'
import json, os
passed = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "HF_TOKEN", "HF_HUB_OFFLINE",
          "TRANSFORMERS_OFFLINE", "RLFT_CACHE")
env = {k: os.environ[k] for k in passed if os.environ.get(k)}
# `ray job stop` sends SIGTERM, then SIGKILL after this many seconds (Ray's default: 3): room for
# the run to finish its iteration and write its checkpoint
env["RAY_JOB_STOP_WAIT_TIME_S"] = os.environ.get("RLFT_STOP_WAIT_S", "300")
print(json.dumps({
    "working_dir": ".",
    "excludes": [".venv", "runs", ".git", "**/__pycache__", ".pytest_cache", "build", "*.egg-info",
                 "bench/results", "wandb"],
    "env_vars": env,
}))
PY
)

"$RAY" job submit --address "$RAY_ADDRESS" --submission-id "$job_id" --runtime-env-json "$runtime_env" --no-wait \
  -- "${RLFT_PYTHON:-python}" -m rlft.cli train "$recipe" "${overrides[@]}" "$@" --quiet
echo
echo "job id:  $job_id"
echo "follow:  RAY_ADDRESS=$RAY_ADDRESS $RAY job logs -f $job_id"
echo "status:  RAY_ADDRESS=$RAY_ADDRESS $RAY job status $job_id"
echo "stop:    RAY_ADDRESS=$RAY_ADDRESS $RAY job stop $job_id"
