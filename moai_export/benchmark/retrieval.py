"""`moai-bench retrieval`: retrieval quality of every target on one BEIR dataset, with deltas
and embedding parity against the first target (the reference)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from ..evaluation.beir import BeirDataset
from ..evaluation.retrieval_metrics import MAX_K, METRICS, PRIMARY, evaluate, rank, similarity_scores
from ..gates.parity import cosine_rows, judge_vectors, rank_agreement
from .targets import Target
from .workloads import length_stats


def encode_all(target: Target, texts: Sequence[str], kind: str, batch_size: int, *, progress: bool,
               desc: str) -> tuple[np.ndarray, float]:
    """(vectors, seconds) of `texts` in order, batch by batch so the progress bar moves."""
    chunks = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", leave=False, disable=not progress):
        chunks.append(target.embedder.encode(list(texts[i:i + batch_size]), kind, batch_size=batch_size))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, target.embedder.contract.dims), np.float32)
    return vectors, time.perf_counter() - start


def vector_parity(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray],
                  gate=None, token_lengths: Sequence[int] | None = None) -> dict:
    """Cosine / max abs of every query and document vector, and top-10 overlap over the corpus;
    with a gate-table cell, the verdict as an export gate would give it (and the worst texts)."""
    if reference[0].shape != candidate[0].shape or reference[1].shape != candidate[1].shape:
        return {"comparable": False, "reason": "embedding shapes differ (different models)"}
    cos = np.concatenate([cosine_rows(reference[0], candidate[0]), cosine_rows(reference[1], candidate[1])])
    diff = max(float(np.abs(reference[i].astype(np.float64) - candidate[i]).max(initial=0.0)) for i in (0, 1))
    # overlap of the top min(10, corpus) so a corpus smaller than 10 can still agree fully
    agreement = rank_agreement(reference, candidate, k=min(MAX_K, len(candidate[1])))
    figures = {"comparable": True, "texts": int(cos.size), "min_cosine": float(np.min(cos)),
               "mean_cosine": float(np.mean(cos)), "p01_cosine": float(np.percentile(cos, 1)), "max_abs": diff,
               "rank_agreement_top10": agreement, "_cosines": cos}
    if gate is not None:
        figures["judged"] = judge_vectors(np.concatenate(reference), np.concatenate(candidate), gate,
                                          token_lengths=token_lengths, rank=agreement)
    return figures


def run_retrieval(targets: Sequence[Target], dataset: BeirDataset, result: dict, *, batch_size: int = 16,
                  with_title: bool = False, max_queries: int | None = None, progress: bool = True,
                  log: Callable[[str], None] = lambda m: None, dimensions: Sequence[int] = ()) -> None:
    """Fill `result` as targets finish (an interrupted run keeps the finished ones)."""
    qids, queries, domains = dataset.evaluated_queries(max_queries)
    documents = dataset.documents(with_title=with_title)
    relevant = dataset.relevant()
    result["dataset"] = {**dataset.describe(), "name": dataset.name, "evaluated_queries": len(qids),
                         "with_title": with_title,
                         "domains": sorted({d for d in domains if d}) if any(domains) else []}
    result["metrics"], result["primary"] = list(METRICS), PRIMARY
    rows = result.setdefault("targets", [])
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for target in targets:
        log(f"{target.label}: {len(queries)} queries, {len(documents)} documents")
        q, q_s = encode_all(target, queries, "query", batch_size, progress=progress, desc=f"{target.label} queries")
        d, d_s = encode_all(target, documents, "document", batch_size, progress=progress,
                            desc=f"{target.label} documents")
        vectors[target.label] = (q, d)
        scores = similarity_scores(q, d, target.embedder.contract.similarity)
        rankings = dict(zip(qids, rank(scores, dataset.corpus_ids, MAX_K)))
        figures = evaluate(rankings, relevant, dict(zip(qids, domains)))
        doc_tokens = target.count_tokens(documents, "document")
        row = {"target": target.label, "queries": figures["queries"], "metrics": figures["mean"],
               "per_domain": figures.get("per_domain", {}),
               "encode": {"queries_s": q_s, "documents_s": d_s, "documents_per_s": len(documents) / d_s,
                          "document_tokens_per_s": sum(doc_tokens) / d_s if any(doc_tokens) else None,
                          "document_tokens": length_stats(doc_tokens) if any(doc_tokens) else {}},
               "truncated_texts": target.embedder.num_truncated,
               "_per_query": figures["per_query"]}
        if dimensions:
            row["dimension_sweep"] = dimension_sweep(q, d, dimensions, target.embedder.contract, dataset.corpus_ids,
                                                     qids, relevant, domains)
        if rows:
            ref = rows[0]
            row["delta"] = {m: row["metrics"][m] - ref["metrics"][m] for m in METRICS}
            row["delta_per_domain"] = {
                dom: {m: vals[m] - ref["per_domain"][dom][m] for m in METRICS}
                for dom, vals in row["per_domain"].items() if dom in ref["per_domain"]}
            row["queries_with_different_" + PRIMARY] = sum(
                1 for qid, f in figures["per_query"].items()
                if abs(f[PRIMARY] - ref["_per_query"][qid][PRIMARY]) > 1e-12)
            gate = target.gate()
            lengths = target.count_tokens(queries, "query") + doc_tokens
            row["parity_vs_reference"] = vector_parity(vectors[ref["target"]], (q, d), gate,
                                                       lengths if any(lengths) else None)
        rows.append(row)


def dimension_sweep(queries: np.ndarray, documents: np.ndarray, dimensions: Sequence[int], contract,
                    corpus_ids, qids, relevant, domains) -> list[dict]:
    """Metrics of the same vectors cut to each Matryoshka width (the first k components,
    renormalized: what `dims=k` / the gateway's `dimensions` return), one encoding for all."""
    from ..core.contract import truncate_dimensions

    sweep = []
    for dims in dimensions:
        if dims > queries.shape[1]:
            continue  # wider than this target's vectors
        q, d = (truncate_dimensions(v, dims, contract.normalize) for v in (queries, documents))
        rankings = dict(zip(qids, rank(similarity_scores(q, d, contract.similarity), corpus_ids, MAX_K)))
        sweep.append({"dims": dims, **evaluate(rankings, relevant, dict(zip(qids, domains)))["mean"]})
    return sweep
