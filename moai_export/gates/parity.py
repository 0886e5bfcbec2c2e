"""Parity: how close an artifact's embeddings are to the reference's, and the gate on it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from ..embedders.base import Embedder
from .probes import Probe


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
) -> ParityResult:
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape}, candidate {candidate.shape}")
    cosines = cosine_rows(reference, candidate)
    abs_diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max(axis=1)
    finite = np.isfinite(candidate).all(axis=1)
    figures = [
        ProbeFigure(p.id, p.kind, float(np.nan_to_num(c, nan=-1.0)), float(np.nan_to_num(d, nan=np.inf)))
        for p, c, d in zip(probes, cosines, abs_diff)
    ]
    return ParityResult(
        candidate=candidate_name,
        reference=reference_name,
        thresholds=thresholds,
        probes=figures,
        nonfinite=[p.id for p, ok in zip(probes, finite) if not ok],
    )


def embed_probes(embedder: Embedder, probes: Sequence[Probe], *, batch_size: int = 8) -> np.ndarray:
    """Embed probes in their given order, queries and documents each in mixed-length batches."""
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


@dataclass
class GateReport:
    """Everything a parity gate decided about one candidate."""

    parity: ParityResult
    rank_agreement: float
    min_rank_agreement: float
    truncated_probes: int | None  # None: the variant cannot tell (a server)
    # what the vectors cannot show: a shipped file that consumers would read differently
    file_failures: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = field(default=None, repr=False)  # the candidate's probe vectors (not reported)

    @property
    def passed(self) -> bool:
        return self.parity.passed and self.rank_agreement >= self.min_rank_agreement and not self.file_failures

    def reasons(self) -> list[str]:
        out = list(self.file_failures) + self.parity.reasons()
        if self.rank_agreement < self.min_rank_agreement:
            out.append(f"top-10 rank agreement {self.rank_agreement:.3f} < {self.min_rank_agreement}")
        return out

    def to_dict(self) -> dict:
        return {
            **self.parity.to_dict(),
            "passed": self.passed,
            "failures": self.reasons(),
            "rank_agreement_top10": self.rank_agreement,
            "min_rank_agreement": self.min_rank_agreement,
            "truncated_probes": self.truncated_probes,
            "file_failures": self.file_failures,
        }


def _token_lengths(embedder: Embedder, probes: Sequence[Probe]) -> list[int] | None:
    """Each probe's length in tokens as the reference's contract tokenizer cuts it (prompt and end
    token included); None for a reference that tokenizes elsewhere (a server)."""
    tokenizer = getattr(embedder, "tokenizer", None)
    if not hasattr(tokenizer, "encode"):
        return None
    lengths = [0] * len(probes)
    for kind in ("query", "document"):
        index = [i for i, p in enumerate(probes) if p.kind == kind]
        if index:
            for i, n in zip(index, tokenizer.encode([probes[i].text for i in index], kind).lengths):
                lengths[i] = int(n)
    return lengths


class ReferenceFigures:
    """The reference's vectors for the probe set and the retrieval probe, computed once and
    compared with any number of candidates."""

    def __init__(self, reference: Embedder):
        from .probes import probe_set, retrieval_probe

        self.name = reference.name
        self.probes = probe_set(reference.contract.max_tokens)
        self.queries, self.documents = retrieval_probe()
        before = reference.num_truncated
        self.vectors = embed_probes(reference, self.probes)
        # probes cut to max tokens: the same texts and contract for every candidate, so a server
        # that cannot report its own count is shown the reference's
        self.truncated = None if before is None else reference.num_truncated - before
        self.retrieval = self._retrieval_vectors(reference)
        self.token_lengths = _token_lengths(reference, self.probes)

    def _retrieval_vectors(self, embedder: Embedder) -> tuple[np.ndarray, np.ndarray]:
        return embedder.encode(self.queries, "query"), embedder.encode(self.documents, "document")

    def gate_with(self, candidate: Embedder, gate) -> GateReport:
        """Gate `candidate` with a `gates.Gate` (thresholds and rank agreement)."""
        return self.gate(candidate, gate.thresholds, gate.min_rank_agreement)

    def gate(self, candidate: Embedder, thresholds: Thresholds, min_rank_agreement: float) -> GateReport:
        truncated_before = candidate.num_truncated
        vectors = embed_probes(candidate, self.probes)
        truncated = self.truncated if truncated_before is None else candidate.num_truncated - truncated_before
        parity = compare(self.vectors, vectors, self.probes, thresholds,
                         candidate_name=candidate.name, reference_name=self.name)
        agreement = rank_agreement(self.retrieval, self._retrieval_vectors(candidate))
        return GateReport(parity, agreement, min_rank_agreement, truncated, vectors=vectors)


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
