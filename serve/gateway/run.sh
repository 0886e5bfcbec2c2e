#!/usr/bin/env bash
# OpenAI-compatible /v1/embeddings in front of a running Triton (serve/triton/run_local.sh), on 127.0.0.1:8080,
# or of a running vLLM server (serve/vllm/run.sh) with --vllm http://127.0.0.1:8000 --vllm-artifact DIR.
#   serve/gateway/run.sh [--triton grpc://127.0.0.1:8001] [--model moai_embedding] [--port 8080]
#       [--api-key KEY | --api-key-file FILE | MOAI_GATEWAY_API_KEYS=k1,k2] [more `moai-export gateway` options]
# In front of Triton it needs no model files: the contract and usage token counts come from Triton. SIGTERM, SIGHUP,
# Ctrl-C: finishes what is in flight (--drain-timeout), exits.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ $# -ge 1 ] && [ -d "$1" ]; then
  echo "$0: the gateway no longer takes a model repository (Triton counts the tokens); drop '$1'" >&2
  exit 2
fi
python="${MOAI_PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
args=("$@")
case " $* " in
  *" --vllm"*) ;;  # in front of vLLM: the model comes from --vllm-artifact
  *)
    case " $* " in *" --triton"*) ;; *) args+=(--triton grpc://127.0.0.1:8001) ;; esac
    case " $* " in *" --model"*) ;; *) args+=(--model moai_embedding) ;; esac ;;
esac
exec "$python" -m moai_export.commands.export_cli gateway "${args[@]}"
