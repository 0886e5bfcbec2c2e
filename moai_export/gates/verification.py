"""Verification records: the one writer of what a gate decided, for every gating command.

A record has one shape whatever wrote it (`merge`, `onnx`, `vllm`, `triton`, `verify`):

    stage, passed, failures        the decision, and every reason it failed
    reference                      what the gate compared with (label or spec)
    chain                          where the artifact comes from: its parent artifact (path, stage,
                                   sha256 of the parent's manifest) and the root reference, carried
                                   forward from the parent, so a chain of exports keeps naming the
                                   reference its first artifact was gated against
    probe_set                      the texts the gate embedded: source (built-in, or built-in plus a
                                   sample of the user's file), count, sha256, per kind, their
                                   token-length percentiles and length buckets, and the sample
                                   (path, sha256 of its files, sample size, seed) that `verify`
                                   re-draws
    reference_vectors              the reference's probe vectors, recorded beside the artifact
                                   (`moai_reference_vectors.npy`, one row per probe, and
                                   `moai_expected_probes.json`: the probes' ids, kinds and texts in
                                   row order, with both files' sha256): what `verify URL --expected
                                   DIR` compares a deployment with, without the base model or adapter
    gates                          one entry per serving configuration gated: the configuration, the
                                   gate-table cell that judged it, and the figures
    checks                         what vectors alone cannot show (adapter effect, merge check,
                                   shipped files), each with its own failures
    + the stage's own fields (dtype, inputs, contract, timings, ...)

Per-probe figures go to a side file (`moai_probes.json`) so the record stays readable. The
manifest's `admitted_for` entries are built here too (`admission_entry`): a configuration is
admitted with the same gate summary whichever command admitted it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..artifacts.admission import MANIFEST_FILE, ServingConfig, admission_entry, read_manifest, sha256_file
from ..artifacts.directories import PARITY_FILE, tool_versions, write_json
from ..core.errors import MoaiError
from .length_buckets import bucket_order
from .parity import GateReport, ReferenceFigures, compare, embed_probes
from .probes import Probe
from .table import Gate

PROBES_FILE = "moai_probes.json"
REFERENCE_VECTORS_FILE = "moai_reference_vectors.npy"  # float32 [probes, dims], rows in the order below
EXPECTED_PROBES_FILE = "moai_expected_probes.json"  # the probes of those rows, and what identifies both
RECORD_VERSION = 1


@dataclass
class GateRun:
    """One candidate gated in one serving configuration (None: a server whose configuration is
    not this machine's to admit) by one cell of the gate table."""

    report: GateReport
    gate: Gate
    config: ServingConfig | None = None

    @property
    def passed(self) -> bool:
        return self.report.passed

    def describe(self) -> str:
        return self.config.describe() if self.config else self.report.parity.candidate

    def summary(self) -> dict:
        figures = self.report.to_dict()
        figures.pop("probes")  # per-probe figures: the side file
        return {"config": self.config.describe() if self.config else None,
                "serving": asdict(self.config) if self.config else None,
                "gate": self.gate.to_dict(), **figures}

    def admission(self, reference: str) -> dict:
        """The manifest entry that admits this configuration."""
        parity = self.report.parity
        gate = {"min_cosine": parity.min_cosine, "max_abs": parity.max_abs,
                "rank_agreement_top10": self.report.rank_agreement, "thresholds": self.gate.to_dict()}
        return admission_entry(self.config, gate=gate, reference=reference, versions=tool_versions())


@dataclass
class Check:
    """A check beyond the vectors' parity: its name, its figures, and why it failed (if it did)."""

    name: str
    failures: list[str]
    figures: dict | None = None

    def to_dict(self) -> dict:
        return {"passed": not self.failures, "failures": self.failures, **(self.figures or {})}


def probe_set_record(probes: Sequence[Probe], token_lengths: Sequence[int] | None = None,
                     buckets: Sequence[str] | None = None, sample: dict | None = None) -> dict:
    """What identifies the probe set an artifact was admitted on, and how long its texts are in
    tokens (a gate on short texts says little about long documents). `sample`: the user's probe
    sample drawn in addition to the built-in set (gates.probe_files.ProbeSample.describe)."""
    kinds = {kind: sum(p.kind == kind for p in probes) for kind in ("query", "document")}
    lengths = None
    if token_lengths:
        ordered = np.sort(np.asarray(token_lengths))
        lengths = {"min": int(ordered[0]), **{f"p{q}": int(np.percentile(ordered, q, method="nearest"))
                                             for q in (50, 90)}, "max": int(ordered[-1])}
    return {"source": "built-in" + (f" + {sample['path']}" if sample else ""), "count": len(probes),
            "sha256": probes_digest(probes), "kinds": kinds, "token_lengths": lengths,
            "length_buckets": dict(sorted(Counter(buckets).items(), key=lambda item: bucket_order(item[0])))
            if buckets else None, "sample": sample}


def chain_of(parent: Path | None, reference: str) -> dict:
    """Where an artifact derived from `parent` comes from, and the root reference of its chain."""
    if parent is None:
        return {"parent": None, "root_reference": reference}
    parent = Path(parent)
    path = parent / MANIFEST_FILE
    manifest = read_manifest(parent) or {}
    root = (manifest.get("chain") or {}).get("root_reference") or reference
    return {"parent": {"path": str(parent.resolve()), "stage": manifest.get("stage"),
                       "manifest_sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None},
            "root_reference": root}


@dataclass
class VerificationRecord:
    stage: str
    reference: str
    runs: list[GateRun]
    figures: ReferenceFigures  # the probe set gated on, as the reference embedded it
    chain: dict | None = None
    checks: Sequence[Check] = ()
    fields: dict | None = None  # the stage's own: dtype, inputs, contract, timings ...
    # Probe vectors of the reference, recorded beside the artifact by write() so a deployment can
    # be checked without the base model and the adapter (write_reference_vectors).
    reference_vectors: dict | None = None

    @property
    def passed(self) -> bool:
        return all(run.passed for run in self.runs) and not any(check.failures for check in self.checks)

    @property
    def failures(self) -> list[str]:
        out = [reason for check in self.checks for reason in check.failures]
        return out + [f"{run.describe()}: {reason}" for run in self.runs for reason in run.report.reasons()]

    def to_dict(self) -> dict:
        gates = [run.summary() for run in self.runs]
        return {
            "record": RECORD_VERSION,
            "stage": self.stage,
            "passed": self.passed,
            "failures": self.failures,
            "reference": self.reference,
            "chain": self.chain or chain_of(None, self.reference),
            "probe_set": {**self.probe_set(), "file": PROBES_FILE},
            "reference_vectors": self.reference_vectors,
            "gates": gates,
            "gate": gates[0] if len(gates) == 1 else None,  # the common case, for people reading it
            "checks": {check.name: check.to_dict() for check in self.checks},
            **(self.fields or {}),
        }

    def probe_set(self) -> dict:
        figures = self.figures
        return probe_set_record(figures.probes, figures.token_lengths, figures.buckets,
                                figures.sample.describe() if figures.sample else None)

    def probe_figures(self) -> dict:
        figures = self.figures
        return {"probes": [{"id": p.id, "kind": p.kind, "tokens": n, "bucket": bucket}
                           for p, n, bucket in zip(figures.probes, figures.token_lengths, figures.buckets)],
                "gates": [{"config": run.describe(),
                           "cosine": [f.cosine for f in run.report.parity.probes],
                           "max_abs": [f.max_abs for f in run.report.parity.probes]} for run in self.runs]}

    def write(self, directory: Path) -> dict:
        """The record and its side file into `directory`; returns the record."""
        self.reference_vectors = write_reference_vectors(directory, self.figures.probes, self.figures.vectors,
                                                         self.reference)
        record = self.to_dict()
        write_json(Path(directory) / PARITY_FILE, record)
        write_json(Path(directory) / PROBES_FILE, self.probe_figures())
        return record

    def admissions(self) -> list[dict]:
        return [run.admission(self.reference) for run in self.runs if run.config is not None and run.passed]


def probes_digest(probes: Sequence[Probe]) -> str:
    """What identifies a probe set: its ids, kinds and texts, in order."""
    return hashlib.sha256(json.dumps([[p.id, p.kind, p.text] for p in probes], ensure_ascii=False).encode()).hexdigest()


def write_reference_vectors(directory: Path, probes: Sequence[Probe], vectors: np.ndarray, reference: str) -> dict:
    """The reference's vectors of `probes` into `directory`; returns the record's entry for them."""
    directory = Path(directory)
    # a new file, never written through: the name may be a hard link into a published repository
    (directory / REFERENCE_VECTORS_FILE).unlink(missing_ok=True)
    np.save(directory / REFERENCE_VECTORS_FILE, np.asarray(vectors, dtype=np.float32))
    entry = {"file": REFERENCE_VECTORS_FILE, "sha256": sha256_file(directory / REFERENCE_VECTORS_FILE),
             "probes_file": EXPECTED_PROBES_FILE, "probes_sha256": probes_digest(probes), "count": len(probes),
             "reference": reference}
    write_json(directory / EXPECTED_PROBES_FILE,
               {**entry, "probes": [{"id": p.id, "kind": p.kind, "text": p.text} for p in probes]})
    return entry


def copy_reference_vectors(source: Path, directory: Path) -> bool:
    """The reference vectors recorded in `source` (an exported artifact), copied into `directory`
    (e.g. a Triton ensemble written without a verification of its own); False: none recorded."""
    import shutil

    if not (Path(source) / EXPECTED_PROBES_FILE).is_file():
        return False
    for name in (REFERENCE_VECTORS_FILE, EXPECTED_PROBES_FILE):
        (Path(directory) / name).unlink(missing_ok=True)  # as write_reference_vectors: never written through
        shutil.copy2(Path(source) / name, Path(directory) / name)
    return True


@dataclass
class ExpectedVectors:
    """Recorded reference vectors: what a deployment of the artifact must answer for `probes`."""

    directory: Path | None  # None: embedded now by a reference spec, not read from an artifact
    reference: str
    probes: list[Probe]
    vectors: np.ndarray

    def gate(self, candidate, gate: Gate) -> GateReport:
        """`candidate`'s answers to the probes against these vectors, within `gate` (cut to the
        candidate's dims and renormalized when it serves Matryoshka vectors). Top-10 agreement is
        not measured: it needs the reference's retrieval corpus."""
        vectors = embed_probes(candidate, self.probes)
        expected = self.vectors[:, :vectors.shape[1]]
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
        parity = compare(expected, vectors, self.probes, gate.thresholds, candidate_name=candidate.name,
                         reference_name=f"recorded: {self.reference}")
        return GateReport(parity, None, gate.min_rank_agreement, None,
                          retrieval="not measured: compared with the recorded probe vectors")


def read_reference_vectors(directory: Path) -> ExpectedVectors:
    """The reference vectors recorded in `directory`, or in the one ensemble of a Triton repository
    that holds them; both files checked against the sha256 recorded with them."""
    directory = Path(directory)
    found = [path.parent for path in [directory / EXPECTED_PROBES_FILE,
                                      *sorted(directory.glob(f"*/{EXPECTED_PROBES_FILE}"))] if path.is_file()]
    if not found:
        raise MoaiError(f"--expected {directory}: no recorded reference vectors ({EXPECTED_PROBES_FILE}); export "
                        "the artifact (or write the Triton repository) again with this version")
    if len(found) > 1:
        raise MoaiError(f"--expected {directory}: several models record reference vectors "
                        f"({', '.join(p.name for p in found)}): name the ensemble's directory")
    where = found[0]
    try:
        entry = json.loads((where / EXPECTED_PROBES_FILE).read_text(encoding="utf-8"))
        probes = [Probe(p["id"], p["kind"], p["text"]) for p in entry["probes"]]
        vectors_path = where / entry["file"]
        intact = sha256_file(vectors_path) == entry["sha256"] and probes_digest(probes) == entry["probes_sha256"]
        vectors = np.load(vectors_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MoaiError(f"--expected {where}: cannot read the recorded reference vectors ({exc})") from None
    if not intact or vectors.shape[0] != len(probes):
        raise MoaiError(f"--expected {where}: the recorded reference vectors changed since they were written "
                        "(sha256 or row count differs): export again")
    return ExpectedVectors(where, entry["reference"], probes, vectors)


def recorded_probe_samples(directories: Sequence[Path]) -> list[tuple[Path, dict]]:
    """(record's directory, probe sample) of every verification record in `directories` (or one
    level below: a Triton repository's ensembles) whose probe set included a user's sample."""
    found = []
    for directory in directories:
        for path in [Path(directory) / PARITY_FILE, *sorted(Path(directory).glob(f"*/{PARITY_FILE}"))]:
            try:
                sample = (json.loads(path.read_text(encoding="utf-8")).get("probe_set") or {}).get("sample")
            except (OSError, ValueError):
                continue  # no record there (or not one this toolkit can read): nothing recorded
            if sample:
                found.append((path.parent, sample))
    return found
