"""`moai-bench parity`: every target against one reference on the built-in probe set (and,
with a dataset, on its texts): min/mean cosine, max abs, top-10 rank agreement, judged by the
target's gate from the one gate table (as `moai-export verify` judges it)."""

from __future__ import annotations

from typing import Callable, Sequence

from ..evaluation.beir import BeirDataset
from ..gates.parity import ReferenceFigures
from ..gates.table import GateOverrides
from .retrieval import encode_all, vector_parity
from .targets import Target


def run_parity(reference: Target, targets: Sequence[Target], overrides: GateOverrides, result: dict, *, dataset: BeirDataset | None = None, max_texts: int | None = None,
               batch_size: int = 16, progress: bool = True, log: Callable[[str], None] = lambda m: None) -> None:
    log(f"reference {reference.label}: embedding the probe set")
    figures = ReferenceFigures(reference.embedder)
    result["reference"] = reference.label
    result["gate_overrides"] = {k: v for k, v in vars(overrides).items() if v is not None}
    result["probes"] = len(figures.probes)
    ref_vectors = None
    if dataset is not None:
        _, queries, _ = dataset.evaluated_queries(max_texts)
        documents = dataset.documents()[:max_texts]
        result["dataset"] = {"path": str(dataset.path), "queries": len(queries), "documents": len(documents)}
        ref_vectors = tuple(encode_all(reference, texts, kind, batch_size, progress=progress,
                                       desc=f"{reference.label} {kind}s")[0]
                            for texts, kind in ((queries, "query"), (documents, "document")))
    rows = result.setdefault("targets", [])
    for target in targets:
        log(f"{target.label}: probes")
        if target.embedder.contract.dims != reference.embedder.contract.dims:
            rows.append({"candidate": target.label, "comparable": False,
                         "reason": f"{target.embedder.contract.dims} dims vs the reference's "
                                   f"{reference.embedder.contract.dims}"})
            continue
        gate = target.gate(overrides)
        report = figures.gate_with(target.embedder, gate)
        row = {"candidate": target.label, "comparable": True, **report.to_dict(), "gate": gate.to_dict()}
        row["candidate"] = target.label
        if ref_vectors is not None:
            vectors = tuple(encode_all(target, texts, kind, batch_size, progress=progress,
                                       desc=f"{target.label} {kind}s")[0]
                            for texts, kind in ((queries, "query"), (documents, "document")))
            lengths = target.count_tokens(queries, "query") + target.count_tokens(documents, "document")
            row["dataset"] = vector_parity(ref_vectors, vectors, gate, lengths if any(lengths) else None)
        rows.append(row)
