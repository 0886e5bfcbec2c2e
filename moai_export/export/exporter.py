"""The exporter skeleton every stage (merge, onnx, vllm, triton) follows:

    with atomic_output_dir(out) as tmp:          # temp dir beside the target (artifacts.py)
        write the artifact into tmp
        candidate = the artifact loaded FROM tmp the way it will serve
                    (runtime, device, dtype, the server's own prompt and truncation)
        run = GateRun(figures.gate_with(candidate, gate), gate, config)   # gate: the table's cell
        admit(tmp, [run], ...)  # refuse (nothing published) or write the verification record
                                # (moai_export.gates.verification) + manifest: every file's hash,
                                # `admitted_for` the configurations gated
    # renamed into place only now

Embedding the reference once (`reference_figures`) is shared too.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..artifacts.directories import PARITY_FILE, weights_digest, write_manifest
from ..core.errors import VerificationFailed
from ..core.text_tables import format_table
from ..embedders.base import Embedder
from ..gates.parity import ReferenceFigures
from ..gates.verification import PROBES_FILE, GateRun, VerificationRecord, chain_of


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
    from ..core.errors import MoaiError

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
    from ..model_files.contract_tokenizer import shipped_tokenizer_failures

    if not (Path(directory) / "tokenizer.json").is_file():
        return []
    return shipped_tokenizer_failures(directory, contract, [(p.kind, p.text) for p in figures.probes])


def admit(directory: Path, runs: list[GateRun], *, stage: str, what: str, source: Path | None,
          reference_label: str, figures: ReferenceFigures, fields: dict, manifest_options: dict, timings: dict, log,
          hint: str = "", manifest_inputs: dict | None = None, parent: Path | None = None) -> dict:
    """Report the gates; raise VerificationFailed if any failed (the caller's atomic directory
    is then discarded), else write the verification record and the manifest into `directory`.
    `what` names the artifact in the error ("onnx int8"); `parent` (default `source`) is the
    artifact this one derives from, named in the record's chain."""
    source_info = {"path": str(source), "weights": weights_digest(source)} if source else None
    record = VerificationRecord(stage, reference_label, runs, figures.probes, token_lengths=figures.token_lengths,
                                chain=chain_of(parent or source, reference_label),
                                fields={**fields, "source": source_info,
                                        "timings": {k: round(v, 3) for k, v in timings.items()}})
    log(format_gate_table([run.report for run in runs]))
    if not record.passed:
        raise VerificationFailed(f"{what} verification FAILED, nothing written{hint}: "
                                 + "; ".join(record.failures[:5]), report=record.to_dict())
    report = record.write(directory)
    write_manifest(directory, stage=stage,
                   inputs=manifest_inputs or {"source": source_info, "reference": reference_label},
                   options=manifest_options,
                   extra={"parity_file": PARITY_FILE, "probes_file": PROBES_FILE, "chain": report["chain"]},
                   admitted_for=record.admissions())
    for run in runs:
        log(f"admitted for {run.describe()}")
    return report


def format_gate_table(gates) -> str:
    rows = [[g.parity.candidate, g.parity.min_cosine, g.parity.mean_cosine, g.parity.max_abs, g.rank_agreement,
             g.truncated_probes, g.passed] for g in gates]
    return format_table(["variant", "min cos", "mean cos", "max abs", "top10 agree", "truncated", "result"], rows)
