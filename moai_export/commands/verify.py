"""`moai-export verify`: the parity gate for any artifact against any reference, in the
configuration it is loaded in, and the admission of that configuration when it passes.

Each artifact is loaded through the kind registry exactly as it would serve (`--device cuda`
loads it on the GPU, a vLLM directory is served by a real vLLM server, a Triton repository by a
real tritonserver), gated with the table's gate for its kind and precision (overrides apply to
every artifact the same way), and, for a local artifact that passes, the configuration is added
to its manifest's `admitted_for`: that is how a GPU configuration is admitted on the GPU machine.

The probe set: the built-in one, plus `--probes` when given; without it, the sample of the user's
texts an artifact's verification record names is drawn again (same file, size and seed) while
that file is still there, and the log says which probe set was used either way.

`--expected DIR` checks a deployment instead (a gateway, a Triton server): it embeds the probes
whose reference vectors the artifact DIR recorded at export and compares the answers with them,
by the gate of the endpoint's kind and precision, without the base model or the adapter.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts.admission import changed_files, read_manifest, record_admission
from ..artifacts.kinds import load_embedder, parse_spec
from ..gates.parity import GateReport, ReferenceFigures
from ..gates.probe_files import ProbeOptions, read_probe_file
from ..gates.table import GateOverrides
from ..gates.verification import GateRun, VerificationRecord, read_reference_vectors, recorded_probe_samples

WORST_SHOWN = 5  # probes named when a deployment fails --expected


def verify(artifacts: list[str], reference: str, *, overrides: GateOverrides | None = None,
           device: str | None = None, admit: bool = True, log=print, dims: int | None = None,
           probes: ProbeOptions | None = None) -> tuple[dict, list]:
    """(JSON-ready report, GateReports) of every artifact against the reference. `dims`: compare
    Matryoshka-truncated vectors (the first `dims` components, renormalized, on both sides); such a
    run admits nothing (admission is for the full vectors an artifact serves)."""
    overrides = overrides or GateOverrides()
    sized = {"dims": dims} if dims is not None else {}
    admit = admit and dims is None
    kinds = [_check_exists(spec) for spec in artifacts]  # a bad spec fails before the reference loads
    if probes is None or probes.path is None:
        probes = _recorded_probes([parse_spec(spec)[1] for spec, kind in zip(artifacts, kinds) if kind.admits], log)
    log(f"reference: {reference}")
    with load_embedder(reference, name="reference", **sized) as ref:
        figures = ReferenceFigures(ref, probes)
    runs, results = [], []
    for spec, kind in zip(artifacts, kinds):
        log(f"checking {spec}")
        # every kind that takes a device (onnx maps device=cuda to its CUDA provider)
        options = {"device": device} if device and kind.takes_device else {}
        options.update(sized)
        with load_embedder(spec, admission="skip", **options) as candidate:
            gate = overrides.apply(kind.gate_family(candidate), candidate.precision)
            run = GateRun(figures.gate_with(candidate, gate), gate, candidate.serving)
            directory = candidate.artifact_dir
        runs.append(run)
        result = {"spec": spec, "kind": kind.name, "precision": candidate.precision, **run.summary()}
        if run.passed and admit and run.config is not None and directory is not None:
            result["admitted"] = _admit(directory, run, reference, log)
        results.append(result)
    record = VerificationRecord("verify", reference, runs, figures,
                                fields={"dims": dims})
    return {**record.to_dict(), "results": results}, [run.report for run in runs]


def verify_expected(endpoint: str, expected: Path, *, overrides: GateOverrides | None = None,
                    log=print) -> tuple[dict, GateReport]:
    """(JSON-ready report, GateReport) of a running endpoint against the reference vectors the
    artifact `expected` recorded: every probe's answer within the gate of the endpoint's kind and
    precision. Top-10 agreement is not measured (it needs the reference's retrieval corpus)."""
    recorded = read_reference_vectors(expected)
    log(f"expected: the reference vectors of {len(recorded.probes)} probes recorded in {recorded.directory} "
        f"(reference: {recorded.reference})")
    kind = _check_exists(endpoint)
    with load_embedder(endpoint, admission="skip") as candidate:
        gate = (overrides or GateOverrides()).apply(kind.gate_family(candidate), candidate.precision)
        report = recorded.gate(candidate, gate)
    parity = report.parity
    worst = sorted(parity.probes, key=lambda probe: probe.cosine)[:WORST_SHOWN]
    return {"stage": "verify", "spec": endpoint, "expected": str(recorded.directory), "reference": recorded.reference,
            "kind": kind.name, "precision": candidate.precision, "gate": gate.to_dict(), **report.to_dict(),
            "worst": [{"id": p.id, "kind": p.kind, "cosine": p.cosine, "max_abs": p.max_abs} for p in worst]}, report


def _recorded_probes(directories: list[str], log) -> ProbeOptions | None:
    """The probe sample the artifacts' records name, drawn again when its file is still there (the
    first one recorded, if they differ); None: the built-in probe set alone."""
    for directory, sample in recorded_probe_samples([Path(d) for d in directories]):
        path = Path(sample["path"])
        if not path.exists():
            log(f"probes: {directory} was admitted with a sample of {path}, which is gone: gating on the "
                "built-in probe set alone")
            continue
        options = ProbeOptions(path, sample["sample"], sample["seed"])
        changed = read_probe_file(path).files != sample.get("files")
        log(f"probes: the built-in set and the sample of {path} recorded in {directory} ({options.sample} texts, seed "
            f"{options.seed})" + ("; NOTE: the file changed since, so the sample may differ" if changed else ""))
        return options
    log("probes: the built-in probe set")
    return None


def _admit(directory, run: GateRun, reference: str, log) -> bool:
    manifest = read_manifest(directory)
    if manifest is None:
        return False  # not an artifact of this toolkit: nothing to record into
    changed = changed_files(directory, manifest, full=True)  # admitting vouches for every byte
    if changed:
        log(f"NOT admitted: {directory}: files changed since it was exported ({', '.join(changed[:3])}); "
            "re-export it instead of admitting changed files")
        return False
    record_admission(directory, run.admission(reference))
    log(f"admitted {directory} for {run.config.describe()}")
    return True


def _check_exists(spec: str):
    kind, location, _ = parse_spec(spec)
    if kind.admits:
        kind.check_directory(location)
    return kind
