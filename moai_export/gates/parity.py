"""Parity: how close an artifact's embeddings are to the reference's, and the gate on it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from ..embedders.base import Embedder
from .length_buckets import bucket_order, length_bucket
from .probe_files import ProbeOptions, draw_sample
from .probes import Probe, probe_set, retrieval_probe, sizing_tokenizer


@dataclass(frozen=True)
class Thresholds:
    min_cosine: float  # every probe's cosine to the reference must reach this
    max_abs: float | None  # and no vector component may differ by more (None: not gated)

    @property
    def cosine_tolerance(self) -> float:
        return 1.0 - self.min_cosine


@dataclass
class ProbeFigure:
    id: str
    kind: str
    cosine: float
    max_abs: float
    bucket: str | None = None  # its length bucket (gates.length_buckets); None: not measured


@dataclass
class ParityResult:
    candidate: str
    reference: str
    thresholds: Thresholds
    probes: list[ProbeFigure]
    nonfinite: list[str] = field(default_factory=list)  # probes whose vector has NaN/inf

    @property
    def min_cosine(self) -> float:
        return min(p.cosine for p in self.probes)

    @property
    def mean_cosine(self) -> float:
        return float(np.mean([p.cosine for p in self.probes]))

    @property
    def max_abs(self) -> float:
        return max(p.max_abs for p in self.probes)

    def by_length(self) -> dict[str, dict]:
        """{length bucket: probes, min cosine, max abs}, shortest bucket first."""
        buckets: dict[str, list[ProbeFigure]] = {}
        for p in self.probes:
            if p.bucket is not None:
                buckets.setdefault(p.bucket, []).append(p)
        return {label: {"probes": len(figures), "min_cosine": min(f.cosine for f in figures),
                        "max_abs": max(f.max_abs for f in figures)}
                for label, figures in sorted(buckets.items(), key=lambda item: bucket_order(item[0]))}

    def failing(self) -> list[ProbeFigure]:
        t = self.thresholds
        return [
            p
            for p in self.probes
            if not (p.cosine >= t.min_cosine) or (t.max_abs is not None and not (p.max_abs <= t.max_abs))
        ]

    @property
    def passed(self) -> bool:
        return not self.nonfinite and not self.failing()

    def reasons(self) -> list[str]:
        t = self.thresholds
        out = [f"{pid}: embedding has NaN/inf (an overflow? export in fp32 or bf16)" for pid in self.nonfinite]
        # worst first: messages show the first few, and those should be the probes that matter
        for p in sorted(self.failing(), key=lambda p: p.cosine if p.cosine == p.cosine else -1.0):
            if p.id in self.nonfinite:
                continue
            parts = []
            if not p.cosine >= t.min_cosine:
                parts.append(f"cosine {p.cosine:.6f} < {t.min_cosine}")
            if t.max_abs is not None and not p.max_abs <= t.max_abs:
                parts.append(f"max abs {p.max_abs:.2e} > {t.max_abs:.0e}")
            out.append(f"{p.id} ({p.kind}): " + ", ".join(parts))
        return out

    def summary(self) -> dict:
        return {
            "candidate": self.candidate,
            "reference": self.reference,
            "thresholds": asdict(self.thresholds),
            "min_cosine": self.min_cosine,
            "mean_cosine": self.mean_cosine,
            "max_abs": self.max_abs,
            "by_length": self.by_length(),
            "passed": self.passed,
            "failures": self.reasons(),
        }

    def to_dict(self) -> dict:
        return {**self.summary(), "probes": [asdict(p) for p in self.probes]}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / norms


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    probes: Sequence[Probe],
    thresholds: Thresholds,
    *,
    candidate_name: str,
    reference_name: str,
    buckets: Sequence[str] | None = None,
) -> ParityResult:
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape}, candidate {candidate.shape}")
    cosines = cosine_rows(reference, candidate)
    abs_diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max(axis=1)
    finite = np.isfinite(candidate).all(axis=1)
    figures = [
        ProbeFigure(p.id, p.kind, float(np.nan_to_num(c, nan=-1.0)), float(np.nan_to_num(d, nan=np.inf)), bucket)
        for p, c, d, bucket in zip(probes, cosines, abs_diff, buckets or [None] * len(probes))
    ]
    return ParityResult(
        candidate=candidate_name,
        reference=reference_name,
        thresholds=thresholds,
        probes=figures,
        nonfinite=[p.id for p, ok in zip(probes, finite) if not ok],
    )


def embed_probes(embedder: Embedder, probes: Sequence[Probe], *, batch_size: int | None = None) -> np.ndarray:
    """Embed probes in their given order, queries and documents each in mixed-length batches cut
    by the embedder's own batching (what it serves with), unless `batch_size` is given."""
    out = np.empty((len(probes), embedder.dims), dtype=np.float32)
    for kind in ("query", "document"):
        index = [i for i, p in enumerate(probes) if p.kind == kind]
        if index:
            out[index] = embedder.encode([probes[i].text for i in index], kind, batch_size=batch_size)
    return out


@dataclass
class AdapterEffect:
    """How far the adapter moves embeddings away from the base model's. If no probe moves
    farther than the parity tolerance, the gate could not tell the merged model from the
    base model: a merge that silently dropped the adapter would pass."""

    min_cosine_base_vs_reference: float
    required_below: float
    candidate_closer_to_reference: bool  # mean cos(candidate, ref) > mean cos(candidate, base)

    @property
    def passed(self) -> bool:
        return self.min_cosine_base_vs_reference < self.required_below and self.candidate_closer_to_reference

    def reasons(self) -> list[str]:
        out = []
        if not self.min_cosine_base_vs_reference < self.required_below:
            out.append(
                f"adapter has no measurable effect: base vs reference min cosine "
                f"{self.min_cosine_base_vs_reference:.7f} is not below {self.required_below}"
            )
        if not self.candidate_closer_to_reference:
            out.append("the artifact is closer to the base model than to the fine-tuned reference")
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "failures": self.reasons()}


def adapter_effect(
    base: np.ndarray, reference: np.ndarray, candidate: np.ndarray, thresholds: Thresholds
) -> AdapterEffect:
    return AdapterEffect(
        min_cosine_base_vs_reference=float(np.min(cosine_rows(base, reference))),
        required_below=thresholds.min_cosine,
        candidate_closer_to_reference=bool(
            np.mean(cosine_rows(candidate, reference)) > np.mean(cosine_rows(candidate, base))
        ),
    )


def top_k(queries: np.ndarray, documents: np.ndarray, k: int) -> np.ndarray:
    scores = queries.astype(np.float64) @ documents.astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def rank_agreement(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray],
                   k: int = 10) -> float:
    """Mean overlap of the top-k documents per query (1.0: the same top-k sets); k shrinks
    to the corpus size for corpora smaller than k."""
    k = min(k, reference[1].shape[0])
    ref, cand = top_k(*reference, k), top_k(*candidate, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref, cand)]))


BUILT_IN_RETRIEVAL = "the built-in retrieval probe"


@dataclass
class GateReport:
    """Everything a parity gate decided about one candidate."""

    parity: ParityResult
    rank_agreement: float | None  # None: not applicable (a probe sample without queries or documents)
    min_rank_agreement: float
    truncated_probes: int | None  # None: the variant cannot tell (a server)
    # what the vectors cannot show: a shipped file that consumers would read differently
    file_failures: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = field(default=None, repr=False)  # the candidate's probe vectors (not reported)
    batching: dict | None = None  # how the candidate cut its forward passes (None: a server's own batcher)
    retrieval: str = BUILT_IN_RETRIEVAL  # what top-10 agreement was measured on, or why not

    @property
    def rank_agreement_failed(self) -> bool:
        return self.rank_agreement is not None and not self.rank_agreement >= self.min_rank_agreement

    @property
    def passed(self) -> bool:
        return self.parity.passed and not self.rank_agreement_failed and not self.file_failures

    def reasons(self) -> list[str]:
        out = list(self.file_failures) + self.parity.reasons()
        if self.rank_agreement_failed:
            out.append(f"top-10 rank agreement {self.rank_agreement:.3f} < {self.min_rank_agreement}")
        return out

    def to_dict(self) -> dict:
        return {
            **self.parity.to_dict(),
            "passed": self.passed,
            "failures": self.reasons(),
            "rank_agreement_top10": self.rank_agreement,
            "min_rank_agreement": self.min_rank_agreement,
            "rank_agreement_on": self.retrieval,
            "truncated_probes": self.truncated_probes,
            "file_failures": self.file_failures,
            "batching": self.batching,
        }


class ReferenceFigures:
    """The reference's vectors for the probe set (the built-in set, plus a sample of the user's
    texts with `ProbeOptions.path`) and the top-10 agreement's queries and corpus, computed once
    and compared with any number of candidates.

    Top-10 agreement: on the built-in retrieval probe; with a probe sample, on the sample's own
    queries against the sample's documents as the corpus, and not applicable (None, reported so)
    when the sample has only one kind."""

    def __init__(self, reference: Embedder, probes: ProbeOptions | None = None):
        self.name = reference.name
        tokenizer = sizing_tokenizer(reference)
        builtin = probe_set(tokenizer)
        self.sample = draw_sample(probes, tokenizer) if probes is not None and probes.path else None
        self.probes = builtin + (self.sample.probes if self.sample else [])
        max_tokens = reference.contract.max_tokens
        # each probe's length in the contract's tokens (prompt and end token included) before
        # truncation, its bucket, and its length as the model gets it (cut to max_tokens)
        lengths = [tokenizer.count_tokens(p.text, p.kind) for p in self.probes]
        self.buckets = [length_bucket(n, max_tokens) for n in lengths]
        self.token_lengths = [min(n, max_tokens) for n in lengths]
        before = reference.num_truncated
        self.vectors = embed_probes(reference, self.probes)
        # probes cut to max tokens: the same texts and contract for every candidate, so a server
        # that cannot report its own count is shown the reference's
        self.truncated = None if before is None else reference.num_truncated - before
        if self.sample is None:
            self.queries, self.documents = retrieval_probe()
            self.retrieval_on = BUILT_IN_RETRIEVAL
            self.retrieval = self._retrieval_vectors(reference, self.vectors)
            return
        rows = {kind: [len(builtin) + i for i, p in enumerate(self.sample.probes) if p.kind == kind]
                for kind in ("query", "document")}
        self.sample_rows = (rows["query"], rows["document"])
        if rows["query"] and rows["document"]:
            self.retrieval_on = (f"the probe sample: {len(rows['query'])} queries against its "
                                 f"{len(rows['document'])} documents")
            self.retrieval = self._retrieval_vectors(reference, self.vectors)
        else:
            missing = "queries" if not rows["query"] else "documents"
            self.retrieval_on = f"not applicable: the probe sample has no {missing}"
            self.retrieval = None

    def _retrieval_vectors(self, embedder: Embedder, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query vectors, document vectors) of the top-10 check: the built-in retrieval probe's,
        embedded now, or the sample's rows of the probe vectors."""
        if self.sample is None:
            return embedder.encode(self.queries, "query"), embedder.encode(self.documents, "document")
        queries, documents = self.sample_rows
        return vectors[queries], vectors[documents]

    def gate_with(self, candidate: Embedder, gate) -> GateReport:
        """Gate `candidate` with a `gates.Gate` (thresholds and rank agreement)."""
        return self.gate(candidate, gate.thresholds, gate.min_rank_agreement)

    def gate(self, candidate: Embedder, thresholds: Thresholds, min_rank_agreement: float) -> GateReport:
        truncated_before = candidate.num_truncated
        vectors = embed_probes(candidate, self.probes)
        truncated = self.truncated if truncated_before is None else candidate.num_truncated - truncated_before
        parity = compare(self.vectors, vectors, self.probes, thresholds,
                         candidate_name=candidate.name, reference_name=self.name, buckets=self.buckets)
        agreement = None if self.retrieval is None else rank_agreement(
            self.retrieval, self._retrieval_vectors(candidate, vectors))
        return GateReport(parity, agreement, min_rank_agreement, truncated, vectors=vectors,
                          retrieval=self.retrieval_on, batching=getattr(candidate, "batching", None))


def judge_vectors(reference: np.ndarray, candidate: np.ndarray, gate, *, token_lengths: Sequence[int] | None = None,
                  rank: float | None = None, worst: int = 5) -> dict:
    """A candidate's vectors of a dataset's texts against the reference's, judged by a gate-table
    cell as the export gates judge the probe set: every text's cosine and max abs, top-10
    agreement when the texts include queries and documents (`rank`), and the worst texts with
    their lengths in tokens (quantization error grows with length)."""
    cosines = np.nan_to_num(cosine_rows(reference, candidate), nan=-1.0)
    abs_diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max(axis=1, initial=0.0)
    below = (cosines < gate.min_cosine) | ((abs_diff > gate.max_abs) if gate.max_abs is not None else False)
    failures = []
    if below.any():
        failures.append(f"{int(below.sum())} of {len(cosines)} texts below the gate (min cosine "
                        f"{cosines.min():.6f} < {gate.min_cosine}" + (f" or max abs > {gate.max_abs:g}" if gate.max_abs
                                                                         is not None else "") + ")")
    if rank is not None and rank < gate.min_rank_agreement:
        failures.append(f"top-10 agreement {rank:.3f} < {gate.min_rank_agreement}")
    order = np.argsort(cosines, kind="stable")[:worst]
    return {"gate": gate.to_dict(), "passed": not failures, "failures": failures, "below_gate": int(below.sum()),
            "worst": [{"index": int(i), "cosine": float(cosines[i]), "max_abs": float(abs_diff[i]),
                       "tokens": int(token_lengths[i]) if token_lengths is not None else None} for i in order]}
