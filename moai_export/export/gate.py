"""What every exporter does around its own writing step: embed the probe set with the
reference once, then gate the written candidate, report, and either refuse (nothing is
published) or write the parity report and manifest beside the artifact."""

from __future__ import annotations

import time
from pathlib import Path

from ..artifacts import PARITY_FILE, weights_digest, write_json, write_manifest
from ..embedders.base import Embedder
from ..errors import VerificationFailed
from ..parity import GateReport, ReferenceFigures
from ..report import format_table


def reference_figures(source: Path, reference: Embedder | None, label: str | None, *, log,
                      timings: dict) -> tuple[ReferenceFigures, str]:
    """The reference's probe figures and its label; without a reference, `source` itself in
    float32 torch, freed right after (the exporter needs the memory next)."""
    from ..embedders.torch_model import TorchEmbedder

    owned = reference is None
    if owned:
        reference = TorchEmbedder.from_dir(source, name=f"torch fp32 ({source.name})")
        label = label or f"torch:{source}"
    log(f"reference: {reference.name}; embedding the probe set")
    started = time.perf_counter()
    figures = ReferenceFigures(reference)
    if owned:
        reference.close()
    timings["reference_s"] = time.perf_counter() - started
    return figures, label or reference.name


def admit(directory: Path, gate: GateReport, *, stage: str, what: str, source: Path, reference_label: str,
          fields: dict, manifest_options: dict, timings: dict, log, hint: str = "") -> dict:
    """Report the gate; raise VerificationFailed (the caller's atomic directory is then
    discarded) or write moai_parity.json and moai_manifest.json into `directory`. `what` names
    the artifact in the error ("onnx int8")."""
    report = {
        "stage": stage,
        "passed": gate.passed,
        "failures": gate.reasons(),
        **fields,
        "reference": reference_label,
        "gate": gate.to_dict(),
        "source": {"path": str(source), "weights": weights_digest(source)},
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    log(format_gate_table([gate]))
    if not gate.passed:
        raise VerificationFailed(f"{what} verification FAILED, nothing written{hint}: "
                                 + "; ".join(gate.reasons()[:5]), report=report)
    write_json(directory / PARITY_FILE, report)
    write_manifest(directory, stage=stage, inputs={"source": report["source"], "reference": reference_label},
                   options=manifest_options, extra={"parity_file": PARITY_FILE})
    return report


def format_gate_table(gates) -> str:
    rows = [[g.parity.candidate, g.parity.min_cosine, g.parity.mean_cosine, g.parity.max_abs, g.rank_agreement,
             g.truncated_probes, g.passed] for g in gates]
    return format_table(["variant", "min cos", "mean cos", "max abs", "top10 agree", "truncated", "result"], rows)
