"""Training throughput of MoAI's recipe on the full-size example (Qwen3-Embedding-0.6B shape,
random weights): batch 256 per device, CachedMultipleNegativesRankingLoss, bf16, gradient
checkpointing. Reports samples/s and peak memory (GPU: torch.cuda.max_memory_allocated;
CPU: peak RSS).

    python bench/train_full_gpu.py                       # on a GPU: the recipe's figures
    python bench/train_full_gpu.py --size tiny --batch-size 8 --mini-batch-size 4 --steps 2 --no-bf16
                                                         # anywhere: proves the script runs

Synthetic pairs: queries of ~--query-words words and passages of ~--doc-words words cut from the
built-in Korean finance triplets (length, not content, sets the cost). No validation: it
measures training steps only. Writes train_full.json / train_full.md under --out (default
bench/results/<date>-<machine>/train-full).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from moai_export.evaluation.finance_triplets import TRIPLETS
from moai_export.evaluation.machine import default_results_dir, machine_description
from moai_export.example.base_model import build_base
from moai_export.train import TrainOptions, train


def synthetic_pairs(path: Path, rows: int, query_words: int, doc_words: int) -> Path:
    words = " ".join(" ".join(t) for t in TRIPLETS).split()

    def cut(start: int, n: int) -> str:
        return " ".join(words[(start + i) % len(words)] for i in range(n))

    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):  # distinct rows: the no-duplicates sampler keeps full batches
            f.write(json.dumps({"query": f"{i} " + cut(i * 7, query_words),
                                "positive": f"{i} " + cut(i * 13, doc_words)}, ensure_ascii=False) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="full")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--mini-batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--query-words", type=int, default=12)
    parser.add_argument("--doc-words", type=int, default=160)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or default_results_dir("train-full")
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="train-full-") as scratch:
        work = Path(scratch)
        (work / "base").mkdir()
        build_base(work / "base", args.size, seed=0)
        pairs = synthetic_pairs(work / "pairs.jsonl", args.batch_size * args.steps, args.query_words, args.doc_words)
        options = TrainOptions(base=str(work / "base"), train=pairs, out=work / "run", max_steps=args.steps,
                               batch_size=args.batch_size, mini_batch_size=args.mini_batch_size,
                               bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        report = train(options)
        wall = time.perf_counter() - started
    result = {
        "benchmark": f"training steps of MoAI's recipe on the {args.size} example (random weights)",
        "settings": {**vars(args), "out": str(out)},
        "steps": report["global_step"],
        "train_seconds": report["train_seconds"],
        "wall_seconds": wall,
        "samples_per_second": report["train_samples_per_second"],
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "machine": machine_description(),
    }
    (out / "train_full.json").write_text(json.dumps(result, indent=2) + "\n")
    memory = (f"peak GPU memory {result['peak_gpu_memory_gib']:.1f} GiB" if cuda
              else f"peak RSS {result['peak_rss_gib']:.1f} GiB (CPU)")
    line = (f"{args.size} example, batch {args.batch_size} (mini-batch {args.mini_batch_size}), "
            f"{'bf16' if args.bf16 else 'fp32'}, {result['steps']} steps: "
            f"{result['samples_per_second']:.1f} samples/s, {memory}")
    (out / "train_full.md").write_text(f"# Training throughput\n\n{line}\n\nMachine: {result['machine']['summary']}\n")
    print(line)


if __name__ == "__main__":
    main()
