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

Before it: `check_input` refuses an input whose files changed since its own gate (hashed in full)
or that no gate admitted (unless --allow-unverified, which marks the output unverified), and
`chain_reference` picks what the output is gated against: the reference given, else the root
reference of the input's chain, never the input alone. Embedding the reference once
(`reference_figures`) is shared too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..artifacts.admission import GATED_STAGES, MANIFEST_FILE, NotAdmitted, changed_files, read_manifest
from ..artifacts.directories import PARITY_FILE, weights_digest, write_manifest
from ..core.errors import MoaiError, VerificationFailed
from ..core.text_tables import format_table
from ..embedders.base import Embedder
from ..gates.length_buckets import bucket_columns
from ..gates.parity import BUILT_IN_RETRIEVAL, ReferenceFigures
from ..gates.probe_files import ProbeOptions
from ..gates.verification import PROBES_FILE, GateRun, VerificationRecord, chain_of


@dataclass
class Provenance:
    """What an exporter derives from: its input's manifest (None: an unverified input, taken with
    --allow-unverified) and the chain it continues."""

    source: Path
    manifest: dict | None
    problem: str | None = None  # why an input taken with --allow-unverified was not admitted

    @property
    def unverified(self) -> str | None:
        """Why the output cannot be admitted (None: it can, if its own gate passes)."""
        if self.problem or self.manifest is None:
            return self.problem or f"{self.source} has no manifest of a gated artifact"
        return self.manifest.get("unverified")

    @property
    def root_reference(self) -> str | None:
        """The reference the chain's first artifact was gated against, as a loadable spec."""
        manifest = self.manifest or {}
        recorded = (manifest.get("chain") or {}).get("root_reference")
        return recorded or (manifest.get("inputs") or {}).get("reference")  # written before chains were recorded


def check_input(source: Path, *, allow_unverified: bool = False) -> Provenance:
    """The input of a derived artifact, refused unless every file it ships is what its own gate
    admitted, hashed in full (the output inherits every byte; loaders re-hash only small files).
    A directory without a gated manifest, or one derived from an unverified input, is refused
    unless `allow_unverified` (then the output is marked unverified too)."""
    manifest = read_manifest(source)
    gated = manifest is not None and manifest.get("stage") in GATED_STAGES and (
        manifest.get("admitted_for") or manifest.get("unverified"))
    if not gated:
        if not allow_unverified:
            raise NotAdmitted(f"{source}: not an artifact a moai-export gate admitted (no {MANIFEST_FILE} with an "
                              "admission): export from the directory `moai-export merge` / `onnx` wrote, or pass "
                              "--allow-unverified to derive from it anyway (the output is marked unverified and "
                              "loaders refuse it without --allow-unverified)")
        return Provenance(Path(source), None)
    changed = changed_files(source, manifest, full=True)
    if changed:
        problem = f"{source}: files changed since verification: {', '.join(changed[:5])}"
        if not allow_unverified:
            raise NotAdmitted(f"{problem}; what was verified is not what is there now: write it again from its own "
                              "source, or pass --allow-unverified to derive from it anyway (marked unverified)")
        return Provenance(Path(source), None, problem)
    if manifest.get("unverified") and not allow_unverified:
        raise NotAdmitted(f"{source}: derived from an unverified input ({manifest['unverified']}); pass "
                          "--allow-unverified to derive from it anyway")
    return Provenance(Path(source), manifest)


def chain_reference(provenance: Provenance, reference: Embedder | None, label: str | None, *, fallback: str,
                    log) -> tuple[Embedder, str, bool]:
    """(reference, its label, owned) the output is gated against: the one given, else the root
    reference recorded in the input's chain (never the input alone: a damaged input compared
    with itself passes). Only an unverified input falls back to itself (`fallback`, a spec), and
    its output is marked unverified."""
    from ..artifacts.kinds import load_embedder

    if reference is not None:
        return reference, label or reference.name, False
    root = provenance.root_reference
    if provenance.manifest is not None:
        if not root:
            raise MoaiError(f"{provenance.source}: its manifest records no root reference; pass --reference "
                            "BASE+ADAPTER (the PEFT reference)")
        try:
            return load_embedder(root, name=f"root reference ({root})", admission="skip"), root, True
        except MoaiError as exc:
            raise MoaiError(f"the root reference recorded in {provenance.source}'s chain, {root}, does not load "
                            f"({exc}); pass --reference BASE+ADAPTER") from None
    log(f"warning: {provenance.unverified}: gated against itself ({fallback}); the output is marked unverified")
    if fallback.startswith("torch:"):
        from ..embedders.torch_model import TorchEmbedder

        # a source, not something served: a missing end-token post-processor (older hub snapshots,
        # hand-made merges) is repaired in memory, as the exporters repair the file they write
        return (TorchEmbedder.from_dir(Path(fallback.removeprefix("torch:")), name=f"unverified input ({fallback})",
                                       repair_tokenizer=True, admission="skip"), fallback, True)
    return load_embedder(fallback, name=f"unverified input ({fallback})", admission="skip"), fallback, True


def derived_reference_figures(provenance: Provenance, reference: Embedder | None, label: str | None, *,
                              fallback: str, log, timings: dict,
                              probes: ProbeOptions | None = None) -> tuple[ReferenceFigures, str]:
    """The probe figures a derived artifact is gated against (see chain_reference), and its label."""
    reference, label, owned = chain_reference(provenance, reference, label, fallback=fallback, log=log)
    return reference_figures(reference, label, owned, log=log, timings=timings, probes=probes), label


def reference_figures(reference: Embedder, label: str, owned: bool, *, log, timings: dict,
                      probes: ProbeOptions | None = None) -> ReferenceFigures:
    """The reference's probe figures, embedded once; an owned reference is freed right after (the
    exporter needs the memory next). `probes`: a sample of the user's texts besides the built-in set."""
    log(f"reference: {label}; embedding the probe set" + (f" and a sample of {probes.path}" if probes and probes.path
                                                          else ""))
    started = time.perf_counter()
    figures = ReferenceFigures(reference, probes)
    if owned:
        reference.close()
    timings["reference_s"] = time.perf_counter() - started
    return figures


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
          hint: str = "", manifest_inputs: dict | None = None, parent: Path | None = None,
          unverified: str | None = None) -> dict:
    """Report the gates; raise VerificationFailed if any failed (the caller's atomic directory
    is then discarded), else write the verification record and the manifest into `directory`.
    `what` names the artifact in the error ("onnx int8"); `parent` (default `source`) is the
    artifact this one derives from, named in the record's chain. `unverified` (why: its input
    was): the output is written but admitted for nothing, and loaders refuse it unless told."""
    source_info = {"path": str(source), "weights": weights_digest(source)} if source else None
    record = VerificationRecord(stage, reference_label, runs, figures,
                                chain=chain_of(parent or source, reference_label),
                                fields={**fields, "source": source_info, "unverified": unverified,
                                        "timings": {k: round(v, 3) for k, v in timings.items()}})
    log(format_gate_table([run.report for run in runs]))
    if not record.passed:
        raise VerificationFailed(f"{what} verification FAILED, nothing written{hint}: "
                                 + "; ".join(record.failures[:5]), report=record.to_dict())
    report = record.write(directory)
    write_manifest(directory, stage=stage,
                   inputs=manifest_inputs or {"source": source_info, "reference": reference_label},
                   options=manifest_options,
                   extra={"parity_file": PARITY_FILE, "probes_file": PROBES_FILE, "chain": report["chain"],
                          **({"unverified": unverified} if unverified else {})},
                   admitted_for=[] if unverified else record.admissions())
    for run in runs:
        log(f"NOT admitted ({unverified}): {run.describe()}" if unverified else f"admitted for {run.describe()}")
    return report


def format_gate_table(gates) -> str:
    """One row per gated candidate, then its min cosine per length bucket."""
    rows = [[g.parity.candidate, g.parity.min_cosine, g.parity.mean_cosine, g.parity.max_abs,
             "n/a" if g.rank_agreement is None else g.rank_agreement, g.truncated_probes, g.passed] for g in gates]
    lines = [format_table(["variant", "min cos", "mean cos", "max abs", "top10 agree", "truncated", "result"], rows),
             format_length_table([(g.parity.candidate, g.parity.by_length()) for g in gates])]
    lines += sorted({f"top-10 agreement: {g.retrieval}" for g in gates if g.retrieval != BUILT_IN_RETRIEVAL})
    return "\n".join(lines)


def format_length_table(named: list[tuple[str, dict]]) -> str:
    """Min cosine per length bucket (tokens, before truncation; probes in the bucket), one row per
    (name, ParityResult.by_length()): long documents are where quantization error grows."""
    columns = bucket_columns([buckets for _, buckets in named])
    rows = [[name] + [buckets[label]["min_cosine"] if label in buckets else None for label, _ in columns]
            for name, buckets in named]
    return format_table(["min cos by length"] + [header for _, header in columns], rows)
