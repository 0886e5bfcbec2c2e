#!/usr/bin/env bash
# The peer virtualenv of bench/peers.py: sentence-transformers (torch, its ONNX backend and int8
# export) and Infinity, with torch held at the CPU build (bench/peers-constraints.txt).
#
#   bench/setup_peers.sh [VENV]        # default .venv-peers in the repository root (git-ignored)
#
# Kept apart from the project's .venv so the project never depends on what the peers pull in.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../.venv-peers}"
python="${PYTHON:-python3.11}"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -c "$here/peers-constraints.txt" -r "$here/peers-requirements.txt"
"$venv/bin/python" -c "import torch; assert '+cpu' in torch.__version__ or not torch.version.cuda, torch.__version__"
"$venv/bin/python" -m pip freeze > "$venv/freeze.txt"
touch "$venv/.installed"
echo "peer venv ready: $venv"
