#!/usr/bin/env bash
# Create the Triton runtime environment (default: .venv-triton at the repository root).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${MOAI_TRITON_VENV:-$root/.venv-triton}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet -r "$root/serve/triton/requirements.txt"
echo "triton runtime environment ready: $venv"
