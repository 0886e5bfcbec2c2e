#!/usr/bin/env bash
# A real tritonserver on 127.0.0.1 (CPU) for a model repository written by `moai-export triton`.
#   serve/triton/run_local.sh triton_models [--http-port 8000 --grpc-port 8001 --metrics-port 8002]
# Needs the runtime environment: serve/triton/setup_env.sh (once).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ $# -lt 1 ]; then
  echo "usage: $0 MODEL_REPOSITORY [--http-port N] [--grpc-port N] [--metrics-port N] [tritonserver args]" >&2
  exit 2
fi
repo="$1"; shift
python="${MOAI_PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m moai_export.launchers.triton_server --repo "$repo" "$@"
