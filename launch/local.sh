#!/usr/bin/env bash
# Start a one-machine Ray cluster for the cluster path (launch/submit.sh, runtime.mode=cluster):
#   launch/local.sh [--num-cpus N]     (extra arguments go to `ray start`)
# Its dashboard and job server listen on 127.0.0.1 only (Ray's core services still bind every
# interface and are guarded by token auth: README "Run on a cluster"). Stop it with: .venv/bin/ray stop
set -euo pipefail
cd "$(dirname "$0")/.."
RAY=${RAY:-.venv/bin/ray}
PORT=${RLFT_RAY_PORT:-6379}
DASHBOARD_PORT=${RLFT_DASHBOARD_PORT:-8265}
# The dashboard hosts the job server that `ray job submit` talks to.
"$RAY" start --head --node-ip-address=127.0.0.1 --port="$PORT" --include-dashboard=true \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --disable-usage-stats "$@"
echo
echo "submit jobs with:   export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT RLFT_STORAGE=$PWD/runs-cluster"
echo "                    launch/submit.sh configs/gppo_tiny_arith.yaml"
echo "or run a driver:    .venv/bin/rlft train RECIPE runtime.mode=cluster runtime.ray_address=127.0.0.1:$PORT runtime.storage=$PWD/runs-cluster"
echo "stop the cluster:   $RAY stop   (stops every Ray started on this machine)"
