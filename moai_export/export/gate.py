"""The exporter skeleton every stage (merge, onnx, vllm, triton) follows:

    with atomic_output_dir(out) as tmp:          # temp dir beside the target (artifacts.py)
        write the artifact into tmp
        candidate = the artifact loaded FROM tmp the way it will serve
                    (runtime, device, dtype, the server's own prompt and truncation)
        gate = figures.gate_with(candidate, gate_for(family, precision))
        admit(tmp, [Verified(gate, config)], ...)  # refuse (nothing published) or write the
                                                   # parity report + manifest: every file's hash,
                                                   # `admitted_for` the configurations gated
    # renamed into place only now

Embedding the reference once (`reference_figures`) is shared too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..admission import ServingConfig, admission_entry
from ..artifacts import PARITY_FILE, tool_versions, weights_digest, write_json, write_manifest
from ..embedders.base import Embedder
from ..errors import VerificationFailed
from ..parity import GateReport, ReferenceFigures
from ..report import format_table


@dataclass
class Verified:
    """One gate run and the serving configuration its candidate ran in."""

    gate: GateReport
    config: ServingConfig

    def to_dict(self) -> dict:
        return {"config": self.config.describe(), **self.gate.to_dict()}


def reference_figures(source: Path, reference: Embedder | None, label: str | None, *, log,
                      timings: dict) -> tuple[ReferenceFigures, str]:
    """The reference's probe figures and its label; without a reference, `source` itself in
    float32 torch, freed right after (the exporter needs the memory next)."""
    from ..embedders.torch_model import TorchEmbedder

    owned = reference is None
    if owned:
        # a source, not something served: no admission to check, and a missing end-token
        # post-processor (older hub snapshots) is repaired in memory as the exporters repair the file
        reference = TorchEmbedder.from_dir(source, name=f"torch fp32 ({source.name})", repair_tokenizer=True,
                                           admission="skip")
        label = label or f"torch:{source}"
    log(f"reference: {reference.name}; embedding the probe set")
    started = time.perf_counter()
    figures = ReferenceFigures(reference)
    if owned:
        reference.close()
    timings["reference_s"] = time.perf_counter() - started
    return figures, label or reference.name


def load_candidate(factory, what: str):
    """The written artifact, loaded as it will serve; a load failure (a shipped file the runtime
    refuses) is a verification failure: nothing is published."""
    from ..errors import MoaiError

    try:
        return factory()
    except VerificationFailed:
        raise
    except MoaiError as exc:
        raise VerificationFailed(f"{what} verification FAILED, nothing written: the written artifact does not "
                                 f"load as it will serve: {exc}") from None


def shipped_file_failures(directory: Path, contract, figures: ReferenceFigures) -> list[str]:
    """Checks of the files an artifact ships that its vectors alone cannot show (a consumer
    reading tokenizer.json with plain `tokenizers`), on the probe texts."""
    from ..inputs import shipped_tokenizer_failures

    if not (Path(directory) / "tokenizer.json").is_file():
        return []
    return shipped_tokenizer_failures(directory, contract, [(p.kind, p.text) for p in figures.probes])


def admit(directory: Path, verified: list[Verified], *, stage: str, what: str, source: Path | None,
          reference_label: str, fields: dict, manifest_options: dict, timings: dict, log, hint: str = "",
          manifest_inputs: dict | None = None) -> dict:
    """Report the gates; raise VerificationFailed if any failed (the caller's atomic directory
    is then discarded), else write moai_parity.json and the manifest into `directory`. `what`
    names the artifact in the error ("onnx int8")."""
    passed = all(v.gate.passed for v in verified)
    source_info = {"path": str(source), "weights": weights_digest(source)} if source else None
    report = {
        "stage": stage,
        "passed": passed,
        "failures": [f"{v.config.describe()}: {r}" for v in verified for r in v.gate.reasons()],
        **fields,
        "reference": reference_label,
        "gate": verified[0].gate.to_dict() if len(verified) == 1 else None,
        "gates": [v.to_dict() for v in verified],
        "source": source_info,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    log(format_gate_table([v.gate for v in verified]))
    if not passed:
        raise VerificationFailed(f"{what} verification FAILED, nothing written{hint}: "
                                 + "; ".join(report["failures"][:5]), report=report)
    write_json(directory / PARITY_FILE, report)
    versions = tool_versions()
    admitted = [admission_entry(v.config, gate=_gate_summary(v.gate), reference=reference_label, versions=versions)
                for v in verified]
    write_manifest(directory, stage=stage,
                   inputs=manifest_inputs or {"source": source_info, "reference": reference_label},
                   options=manifest_options, extra={"parity_file": PARITY_FILE}, admitted_for=admitted)
    for v in verified:
        log(f"admitted for {v.config.describe()}")
    return report


def _gate_summary(gate: GateReport) -> dict:
    t = gate.parity.thresholds
    return {"min_cosine": gate.parity.min_cosine, "max_abs": gate.parity.max_abs,
            "rank_agreement_top10": gate.rank_agreement,
            "thresholds": {"min_cosine": t.min_cosine, "max_abs": t.max_abs,
                           "min_rank_agreement": gate.min_rank_agreement}}


def format_gate_table(gates) -> str:
    rows = [[g.parity.candidate, g.parity.min_cosine, g.parity.mean_cosine, g.parity.max_abs, g.rank_agreement,
             g.truncated_probes, g.passed] for g in gates]
    return format_table(["variant", "min cos", "mean cos", "max abs", "top10 agree", "truncated", "result"], rows)
