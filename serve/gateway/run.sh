#!/usr/bin/env bash
# OpenAI-compatible /v1/embeddings in front of a running Triton (serve/triton/run_local.sh), on 127.0.0.1:8080.
#   serve/gateway/run.sh triton_models [--triton grpc://127.0.0.1:8001] [--model moai_embedding] [--port 8080]
#       [--api-key KEY | --api-key-file FILE | MOAI_GATEWAY_API_KEYS=k1,k2] [more `moai-export gateway` options]
# The repository gives the tokenizer that counts usage tokens. SIGTERM / Ctrl-C: finishes what is in flight, exits.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ $# -lt 1 ]; then
  echo "usage: $0 MODEL_REPOSITORY [--triton grpc://HOST:PORT] [--model NAME] [moai-export gateway options]" >&2
  exit 2
fi
repo="$1"; shift
python="${MOAI_PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
args=("$@")
case " $* " in *" --triton"*) ;; *) args+=(--triton grpc://127.0.0.1:8001) ;; esac
case " $* " in *" --model"*) ;; *) args+=(--model moai_embedding) ;; esac
exec "$python" -m moai_export.cli gateway --tokenizer "$repo" "${args[@]}"
