"""Choose the token budget the in-process variants batch under (core.batching.SERVING_BUDGETS).

    python bench/token_budget.py --target onnx:build/demo-small/onnx-fp32 --target torch:build/demo-small/merged \
        --dataset ../shared/data/datasets/autorag-ko [--rounds 2] [--limit 240] [--out DIR]

For each target, one Embedder embeds the same passages under each batching policy: the old
default (16 texts a pass in file order) and length-sorted token budgets of several sizes.
Policies are timed in interleaved rounds (each round runs every policy once, in a rotated
order), so a noisy shared machine slows them alike; the best round of each is reported, as
docs/s and its ratio to the old default. Every policy's vectors are checked against the first
policy's (cosine >= 0.99999): a faster batching that changed the vectors would be no answer.
Writes OUT/token-budget.json and OUT/token-budget.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np

from moai_export.artifacts.kinds import load_embedder
from moai_export.core.batching import FixedCount, TokenBudget, describe_policy
from moai_export.evaluation.beir import load_beir
from moai_export.evaluation.machine import machine_description
from moai_export.gates.parity import cosine_rows

POLICIES = {
    "fixed-16 (file order)": FixedCount(16),
    "budget-2048": TokenBudget(2048, 64),
    "budget-4096": TokenBudget(4096, 64),
    "budget-8192": TokenBudget(8192, 64),
    "budget-16384": TokenBudget(16384, 64),
}


def measure(spec: str, texts: list[str], rounds: int) -> dict:
    embedder = load_embedder(spec)
    lengths = embedder.tokenizer.encode(texts, "document").lengths
    best: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    names = list(POLICIES)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            embedder.policy = POLICIES[name]
            start = time.perf_counter()
            vectors[name] = embedder.encode(texts, "document")
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    baseline = names[0]
    rows = []
    for name in names:
        rows.append({"label": name, **describe_policy(POLICIES[name]),
                     "docs_per_s": len(texts) / best[name], "ratio": best[baseline] / best[name],
                     "min_cosine_to_first": float(cosine_rows(vectors[baseline], vectors[name]).min())})
    embedder.close()
    return {"target": spec, "texts": len(texts), "mean_tokens": float(np.mean(lengths)),
            "max_tokens": int(np.max(lengths)), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", action="append", required=True, help="an in-process spec (onnx:, torch:)")
    parser.add_argument("--dataset", type=Path, required=True, help="BEIR directory whose passages are embedded")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=240, help="first N passages (default 240)")
    parser.add_argument("--out", type=Path,
                        default=Path("bench/results") / f"{dt.date.today().isoformat()}-token-budget")
    args = parser.parse_args()
    texts = load_beir(args.dataset).documents()[:args.limit]
    results = {"machine": machine_description(), "dataset": str(args.dataset), "rounds": args.rounds,
               "targets": [measure(spec, texts, args.rounds) for spec in args.target]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "token-budget.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results, len(texts), args))


def markdown(results: dict, texts: int, args) -> str:
    lines = [f"# Token budget, {results['machine'].get('cpu', '')}", "",
             f"{texts} passages of {args.dataset}, best of {args.rounds} interleaved rounds, "
             f"load average {results['machine'].get('load_average_at_start', '?')} at the start.", ""]
    for target in results["targets"]:
        lines += [f"## {target['target']} (mean {target['mean_tokens']:.0f} tokens, max {target['max_tokens']})", "",
                  "| policy | docs/s | vs fixed-16 | min cosine to fixed-16 |", "|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['docs_per_s']:.1f} | {r['ratio']:.2f}x | {r['min_cosine_to_first']:.7f} |"
                  for r in target["rows"]]
        lines.append("")
    text = "\n".join(lines)
    (args.out / "token-budget.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
