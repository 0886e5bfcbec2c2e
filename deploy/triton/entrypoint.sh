#!/bin/sh
# The Triton image's entrypoint: the launcher's admission check first (the one
# serve/triton/run_local.sh runs: a repository no parity gate admitted for its configuration is
# refused), then tritonserver in its place (PID 1, so it receives Kubernetes' SIGTERM).
#   MOAI_MODEL_REPOSITORY  the model repository (default /models)
#   MOAI_ALLOW_UNVERIFIED  1: serve a repository no gate admitted (the check says so loudly)
#   MOAI_PYTHON            the Python that runs the check (default python3: the image's)
# Arguments are passed on to tritonserver (e.g. --model-control-mode=explicit --load-model=NAME).
set -eu
repo="${MOAI_MODEL_REPOSITORY:-/models}"
allow=
if [ "${MOAI_ALLOW_UNVERIFIED:-0}" = 1 ]; then allow=--allow-unverified; fi
# shellcheck disable=SC2086  # $allow: one word or none
"${MOAI_PYTHON:-python3}" -m moai_export.launchers.triton_server --repo "$repo" --check-only $allow
exec tritonserver --model-repository="$repo" "$@"
