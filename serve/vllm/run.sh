#!/usr/bin/env bash
# vLLM's OpenAI-compatible server for a directory written by `moai-export vllm`, on 127.0.0.1:8000.
#   serve/vllm/run.sh build/vllm [--port 8000] [--dtype float32|bfloat16] [--lora NAME=ADAPTER_DIR]
# float32 on CPU, bfloat16 on a GPU unless --dtype says otherwise. Needs serve/vllm/setup_env.sh (once).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ $# -lt 1 ]; then
  echo "usage: $0 VLLM_DIR [--host H] [--port N] [--dtype D] [--lora NAME=ADAPTER_DIR] [vLLM args]" >&2
  exit 2
fi
python="${MOAI_PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m moai_export.launchers.vllm_server "$@"
