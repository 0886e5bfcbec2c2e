"""Verification on a server that is not started here (NVIDIA's container on a GPU): wait until it
serves exactly the written repository, gate it, and record the result in the repository."""

from __future__ import annotations

from pathlib import Path

from ...artifacts.admission import ServingConfig, read_manifest, repository_id
from ...core.addresses import parse_url
from ...core.errors import MoaiError, VerificationFailed
from ...gates.verification import GateRun, VerificationRecord, chain_of
from ..exporter import format_gate_table
from .options import VERIFY_SCHEMES


def wait_for_repository(address: str, model: str, protocol: str, wanted: str, wait_s: float, name: str):
    """A client of the server at `address` once it serves the ensemble with this repository id:
    a server still loading, or serving an older copy, is waited for, not verified."""
    import time

    from ...embedders.triton import TritonEmbedder

    deadline = time.monotonic() + wait_s
    last = "no answer"
    while True:
        try:
            served = TritonEmbedder(address, model, protocol=protocol, ready_timeout=5, name=name)
        except MoaiError as exc:
            last = str(exc)
        else:
            if served.repository_id == wanted:
                return served
            last = f"it serves another {model!r} (repository id {served.repository_id!r})"
            served.close()
        if time.monotonic() > deadline:
            raise MoaiError(f"{protocol}://{address} did not serve this repository within {wait_s:.0f} s: {last}")
        time.sleep(1.0)


def verify_remote(repo: Path, model: str, url: str, figures, gate, config: ServingConfig, reference_label: str,
                  log, wait_s: float = 600.0, unverified: str | None = None) -> None:
    """Gate a server that serves the published `repo` (e.g. NVIDIA's container on a GPU) and record
    the result in the repository; the server must serve exactly these files."""
    from ...artifacts.admission import record_admission

    protocol, endpoint = parse_url(url, VERIFY_SCHEMES, "--verify-with")
    address = str(endpoint)
    log(f"waiting for {url} to serve {repo} (start the server on it now; up to {wait_s:.0f} s)")
    with wait_for_repository(address, model, protocol, repository_id(repo / model), wait_s,
                              name=f"triton {url} ({config.describe()})") as served:
        log(f"verifying the repository as served by {url}")
        report = figures.gate_with(served, gate)
    log(format_gate_table([report]))
    ensemble_dir = repo / model
    artifact = ((read_manifest(ensemble_dir) or {}).get("inputs") or {}).get("artifact")
    run = GateRun(report, gate, config)
    record = VerificationRecord("triton", reference_label, [run], figures,
                                chain=chain_of(Path(artifact) if artifact else None, reference_label),
                                fields={"precision": config.dtype, "server": url, "unverified": unverified})
    record.write(ensemble_dir)
    if not record.passed:
        raise VerificationFailed(f"triton repository verification on {url} FAILED (the repository is written but "
                                 f"not admitted; launchers refuse it): " + "; ".join(record.failures[:5]))
    if unverified:
        log(f"NOT admitted ({unverified}): {config.describe()}")
        return
    record_admission(ensemble_dir, run.admission(reference_label))
    log(f"admitted for {config.describe()}")
