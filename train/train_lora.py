"""The seed's training recipe: a LoRA adapter on Qwen3-Embedding-0.6B for Korean finance retrieval.

    python train/train_lora.py --base Qwen/Qwen3-Embedding-0.6B --data train.jsonl --out adapter/ \
        --steps 1000 --batch-size 64 --mini-batch-size 8 --lr 2e-4 [--device cuda]

MoAI's recipe: LoRA r=64, alpha=128, dropout 0.05 on q,k,v,o,gate,up,down_proj;
CachedMultipleNegativesRankingLoss (large batches of in-batch negatives in bounded memory);
queries get the model's query prompt, documents none; max 1024 tokens (from the base's contract).
`--data` is JSON lines with "query", "positive" and optionally "negative" (a hard negative).
The adapter it writes is what `moai-export merge --adapter` takes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moai_export.model_dir import read_contract
from moai_export.errors import MoaiError
from moai_export.example.train import train_adapter
from moai_export.sources import resolve_model_dir


def read_examples(path: Path) -> list[tuple[str, ...]]:
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            example = (row["query"], row["positive"]) + ((row["negative"],) if row.get("negative") else ())
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise MoaiError(f"{path}:{number}: expected JSON with query, positive[, negative] ({exc})") from None
        examples.append(example)
    if len(examples) < 2:
        raise MoaiError(f"{path}: need at least 2 examples (in-batch negatives), found {len(examples)}")
    return examples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="Base model: local sentence-transformers dir or hub id.")
    parser.add_argument("--data", required=True, type=Path, help="JSON lines: query, positive[, negative].")
    parser.add_argument("--out", required=True, type=Path, help="Adapter directory to write.")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mini-batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        if args.out.exists() and any(args.out.iterdir()):
            raise MoaiError(f"{args.out} exists and is not empty")
        base_dir = resolve_model_dir(args.base, "base model")
        contract = read_contract(base_dir)
        losses = train_adapter(base_dir, args.out, contract, steps=args.steps, seed=args.seed, base_name=args.base,
                               learning_rate=args.lr, batch_size=args.batch_size,
                               mini_batch_size=args.mini_batch_size, examples=read_examples(args.data),
                               device=args.device)
    except MoaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"adapter written to {args.out}; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
