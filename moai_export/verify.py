"""`moai-export verify`: the parity gate for any artifact against any reference, in the
configuration it is loaded in, and the admission of that configuration when it passes.

Each artifact is loaded through the kind registry exactly as it would serve (`--device cuda`
loads it on the GPU, a vLLM directory is served by a real vLLM server, a Triton repository by a
real tritonserver), gated with the table's gate for its kind and precision (overrides apply to
every artifact the same way), and, for a local artifact that passes, the configuration is added
to its manifest's `admitted_for`: that is how a GPU configuration is admitted on the GPU machine.
"""

from __future__ import annotations

from .admission import admission_entry, changed_files, read_manifest, record_admission
from .artifacts import tool_versions
from .gates import GateOverrides
from .kinds import load_embedder, parse_spec
from .parity import ReferenceFigures

def verify(artifacts: list[str], reference: str, *, overrides: GateOverrides | None = None,
           device: str | None = None, admit: bool = True, log=print, dims: int | None = None) -> tuple[dict, list]:
    """(JSON-ready report, GateReports) of every artifact against the reference. `dims`: compare
    Matryoshka-truncated vectors (the first `dims` components, renormalized, on both sides); such a
    run admits nothing (admission is for the full vectors an artifact serves)."""
    overrides = overrides or GateOverrides()
    sized = {"dims": dims} if dims is not None else {}
    admit = admit and dims is None
    kinds = [_check_exists(spec) for spec in artifacts]  # a bad spec fails before the reference loads
    log(f"reference: {reference}")
    with load_embedder(reference, name="reference", **sized) as ref:
        figures = ReferenceFigures(ref)
    gates, results = [], []
    for spec, kind in zip(artifacts, kinds):
        log(f"checking {spec}")
        # every kind that takes a device (onnx maps device=cuda to its CUDA provider)
        options = {"device": device} if device and kind.takes_device else {}
        options.update(sized)
        with load_embedder(spec, admission="skip", **options) as candidate:
            gate = overrides.apply(kind.family, candidate.precision)
            report = figures.gate_with(candidate, gate)
            serving, directory = candidate.serving, candidate.artifact_dir
        gates.append(report)
        result = {"spec": spec, "kind": kind.name, "precision": candidate.precision,
                  "config": serving.describe() if serving else None, **report.to_dict()}
        if report.passed and admit and serving is not None and directory is not None:
            result["admitted"] = _admit(directory, serving, report, reference, log)
        results.append(result)
    report = {
        "stage": "verify",
        "reference": reference,
        "dims": dims,
        "passed": all(g.passed for g in gates),
        "results": results,
    }
    return report, gates


def _admit(directory, serving, report, reference: str, log) -> bool:
    manifest = read_manifest(directory)
    if manifest is None:
        return False  # not an artifact of this toolkit: nothing to record into
    changed = changed_files(directory, manifest)
    if changed:
        log(f"NOT admitted: {directory}: files changed since it was exported ({', '.join(changed[:3])}); "
            "re-export it instead of admitting changed files")
        return False
    gate = {"min_cosine": report.parity.min_cosine, "max_abs": report.parity.max_abs,
            "rank_agreement_top10": report.rank_agreement}
    record_admission(directory, admission_entry(serving, gate=gate, reference=reference, versions=tool_versions()))
    log(f"admitted {directory} for {serving.describe()}")
    return True


def _check_exists(spec: str):
    kind, location, _ = parse_spec(spec)
    if kind.admits:
        kind.check_directory(location)
    return kind
