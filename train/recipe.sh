#!/usr/bin/env bash
# MoAI's recipe, as command lines (every setting is already moai-export train's default).
#   train/recipe.sh single   PAIRS BEIR_DIR OUT            one GPU
#   train/recipe.sh ddp      PAIRS BEIR_DIR OUT [GPUS=6]   one machine, DDP over its GPUs
#   train/recipe.sh nodes    PAIRS BEIR_DIR OUT NODES GPUS_PER_NODE RDZV_HOST:PORT   (run on every node)
# Extra options after these arguments go to moai-export train (e.g. --resume, --report-to tensorboard).
set -euo pipefail
BASE=${BASE:-Qwen/Qwen3-Embedding-0.6B}
mode=${1:?single|ddp|nodes}; data=${2:?training pairs}; eval_dir=${3:?BEIR validation dir}; out=${4:?run directory}
shift 4
recipe=(--base "$BASE" --train "$data" --eval "$eval_dir" --out "$out")
case "$mode" in
  single)
    exec moai-export train "${recipe[@]}" "$@" ;;
  ddp)
    gpus=${1:-6}; shift $(( $# > 0 ? 1 : 0 ))
    exec torchrun --nproc-per-node "$gpus" -m moai_export.train "${recipe[@]}" "$@" ;;
  nodes)
    nodes=${1:?nodes}; gpus=${2:?GPUs per node}; endpoint=${3:?rendezvous HOST:PORT}; shift 3
    exec torchrun --nnodes "$nodes" --nproc-per-node "$gpus" --rdzv-backend c10d --rdzv-endpoint "$endpoint" \
      --rdzv-id moai-train -m moai_export.train "${recipe[@]}" "$@" ;;
  *) echo "unknown mode $mode (single|ddp|nodes)" >&2; exit 2 ;;
esac
