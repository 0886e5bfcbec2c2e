"""Retrieval metrics with binary relevance, defined exactly as sentence-transformers'
InformationRetrievalEvaluator defines them (the tests hold the two equal):

- ranking: descending score, ties broken by ascending corpus id;
- NDCG@k: DCG of the top k (rel / log2(rank + 1)) over the DCG of |relevant| ones at the top;
- MRR@k: 1 / rank of the first relevant document in the top k (0 if none);
- Recall@k: relevant documents in the top k / |relevant|;
- Accuracy@k: 1 if any relevant document is in the top k;
- MAP@k: sum over relevant hits of precision at that rank, / min(k, |relevant|).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..core.errors import MoaiError

PRIMARY = "ndcg@10"
METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "accuracy@1", "map@10")
MAX_K = 10


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, doc in enumerate(ranked[:k]) if doc in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal > 0 else 0.0


def mrr_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return next((1.0 / (i + 1) for i, doc in enumerate(ranked[:k]) if doc in relevant), 0.0)


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return sum(1 for doc in ranked[:k] if doc in relevant) / len(relevant) if relevant else 0.0


def accuracy_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return 1.0 if any(doc in relevant for doc in ranked[:k]) else 0.0


def map_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    hits, total = 0, 0.0
    for i, doc in enumerate(ranked[:k]):
        if doc in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(relevant)) if relevant else 0.0


FUNCTIONS = {"ndcg": ndcg_at_k, "mrr": mrr_at_k, "recall": recall_at_k, "accuracy": accuracy_at_k, "map": map_at_k}


def query_metrics(ranked: Sequence[str], relevant: set[str], metrics: Sequence[str] = METRICS) -> dict[str, float]:
    out = {}
    for metric in metrics:
        name, _, k = metric.partition("@")
        out[metric] = FUNCTIONS[name](ranked, relevant, int(k))
    return out


def similarity_scores(queries: np.ndarray, documents: np.ndarray, similarity: str = "cosine") -> np.ndarray:
    """float32 scores [queries, documents], as sentence-transformers computes them (cosine:
    L2-normalize with eps 1e-12, then dot)."""
    q, d = np.asarray(queries, dtype=np.float32), np.asarray(documents, dtype=np.float32)
    if similarity == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), np.float32(1e-12))
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), np.float32(1e-12))
    elif similarity != "dot":
        raise MoaiError(f"similarity {similarity!r} is not supported (cosine or dot)")
    return q @ d.T


def rank(scores: np.ndarray, corpus_ids: Sequence[str], k: int = MAX_K) -> list[list[str]]:
    """Top-k corpus ids per query: descending score, ties by ascending corpus id."""
    n = scores.shape[1]
    id_order = np.empty(n, dtype=np.int64)
    id_order[np.argsort(np.asarray(corpus_ids, dtype=object), kind="stable")] = np.arange(n)
    out = []
    for row in scores:
        if n > k:  # every score tied with the k-th stays a candidate, so ties resolve by id
            threshold = np.partition(row, n - k)[n - k]
            candidates = np.nonzero(row >= threshold)[0]
        else:
            candidates = np.arange(n)
        order = np.lexsort((id_order[candidates], -row[candidates].astype(np.float64)))
        out.append([corpus_ids[i] for i in candidates[order][:k]])
    return out


def evaluate(rankings: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]],
             domains: Mapping[str, str | None] | None = None, metrics: Sequence[str] = METRICS) -> dict:
    """Mean of each metric over the ranked queries, per query, and per domain when given."""
    per_query = {qid: query_metrics(ranked, relevant[qid], metrics) for qid, ranked in rankings.items()}
    out = {"queries": len(per_query), "mean": _mean(per_query.values(), metrics), "per_query": per_query}
    if domains and any(domains.get(q) for q in per_query):
        groups: dict[str, list[dict]] = {}
        for qid, figures in per_query.items():
            groups.setdefault(str(domains.get(qid) or "(none)"), []).append(figures)
        out["per_domain"] = {d: {"queries": len(rows), **_mean(rows, metrics)} for d, rows in sorted(groups.items())}
    return out


def _mean(rows, metrics: Sequence[str]) -> dict[str, float]:
    rows = list(rows)
    return {m: float(np.mean([r[m] for r in rows])) if rows else float("nan") for m in metrics}
