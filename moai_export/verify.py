"""`moai-export verify`: the parity gate for any artifact against any reference."""

from __future__ import annotations

import json
from pathlib import Path

from .artifacts import MANIFEST_FILE
from .embedders import load_embedder, parse_spec
from .parity import MERGE_THRESHOLDS, ReferenceFigures, Thresholds


def default_gate(spec: str, candidate=None) -> tuple[Thresholds, float]:
    """Thresholds for an artifact, by what its manifest says it is (precision or dtype); a
    server says what it serves (the Triton ensemble carries the ONNX artifact's precision)."""
    from .export.onnx import MIN_RANK_AGREEMENT, ONNX_THRESHOLDS

    kind, location = parse_spec(spec)
    if kind.startswith("triton-"):
        precision = getattr(candidate, "precision", None) or "fp32"
        return ONNX_THRESHOLDS[precision], MIN_RANK_AGREEMENT[precision]
    manifest_path = Path(location) / MANIFEST_FILE
    options = json.loads(manifest_path.read_text()).get("options", {}) if manifest_path.is_file() else {}
    if kind == "onnx":
        precision = options.get("precision", "fp32")
        return ONNX_THRESHOLDS[precision], MIN_RANK_AGREEMENT[precision]
    dtype = options.get("dtype", "fp32")
    return MERGE_THRESHOLDS.get(dtype, MERGE_THRESHOLDS["fp32"]), MIN_RANK_AGREEMENT.get(dtype, 0.95)


def verify(artifacts: list[str], reference: str, *, thresholds: Thresholds | None = None,
           min_rank_agreement: float | None = None, log=print) -> tuple[dict, list]:
    """(JSON-ready report, GateReports) of every artifact against the reference."""
    log(f"reference: {reference}")
    with load_embedder(reference, name="reference") as ref:
        figures = ReferenceFigures(ref)
    gates = []
    for spec in artifacts:
        log(f"checking {spec}")
        with load_embedder(spec) as candidate:
            default_thresholds, default_agreement = default_gate(spec, candidate)
            gates.append(figures.gate(candidate, thresholds or default_thresholds,
                                      default_agreement if min_rank_agreement is None else min_rank_agreement))
    report = {
        "stage": "verify",
        "reference": reference,
        "passed": all(g.passed for g in gates),
        "results": [g.to_dict() for g in gates],
    }
    return report, gates
