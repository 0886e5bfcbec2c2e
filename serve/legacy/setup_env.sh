#!/usr/bin/env bash
# Create the legacy loaders' environment (default: .venv-legacy at the repository root): transformers
# 4.51 and sentence-transformers 4.1 on the CPU torch, where tests/test_legacy_loaders.py loads the
# merged directory as the rest of the ecosystem does.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${MOAI_LEGACY_VENV:-$root/.venv-legacy}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# The CPU build of torch first (a local wheel here): sentence-transformers' unpinned torch is then
# already satisfied instead of pulling a multi-GB CUDA build.
"$venv/bin/pip" install --quiet torch==2.13.0
"$venv/bin/pip" install --quiet -r "$root/serve/legacy/requirements.txt"
"$venv/bin/python" -c "import transformers, sentence_transformers as st; print('transformers', transformers.__version__, 'sentence-transformers', st.__version__)"
echo "legacy loaders environment ready: $venv"
