"""The reliability suite: the hostile and failure probes of the test suite, run together on real
servers (tritonserver, the gateway, the launchers), with one report of the counts: probes tried,
answered cleanly, tracebacks, lost or wrong answers (each test fails on any of those).

    python bench/reliability.py [--out DIR]

Writes DIR/results.json (every probe: outcome, seconds) and DIR/README.md. The probes are the
tests named below; each reproduces a fault as a hostile user or a broken machine would make it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# family -> pytest node ids (files or file::test)
PROBES = {
    "tampering and the chain of admission": ["tests/test_chain_of_admission.py"],
    "spec options parsed strictly": ["tests/test_kind_registry.py::test_spec_options_are_typed_by_the_kind_strictly"],
    "stub kill: readiness and self-healing": [
        "tests/test_launchers.py::test_a_dead_triton_stub_fails_readiness_and_the_launcher_heals_it"],
    "gateway: keys, limits, slow clients, huge headers, nested JSON, signals with requests in flight": [
        f"tests/test_gateway.py::{name}" for name in (
            "test_a_gateway_meant_to_be_protected_never_starts_open", "test_an_open_gateway_is_loopback_or_said_out_loud",
            "test_huge_or_countless_headers_are_refused_431_without_growing_memory",
            "test_slow_clients_get_408_and_idle_connections_close",
            "test_client_mistakes_are_4xx_in_openai_shape_and_counted", "test_health_names_the_upstream_to_key_holders_only",
            "test_stop_signals_finish_the_requests_in_flight",
            "test_triton_down_gives_503_and_the_gateway_recovers_on_another_repository")],
    "launchers: taken ports, foreign health answers, temp files": ["tests/test_launcher_failures.py"],
    "full disk, unwritable reports, truncated weights, killed runs": ["tests/test_failure_paths.py"],
    "training runs that cannot learn or measure": [
        f"tests/test_train.py::{name}" for name in (
            "test_a_training_file_that_is_not_utf8_is_one_error_line",
            "test_a_learning_rate_that_cannot_learn_is_a_usage_error_before_anything_is_written",
            "test_validation_whose_qrels_name_only_absent_documents_is_refused",
            "test_eval_and_eval_split_both_or_neither_is_a_usage_error",
            "test_force_does_not_delete_a_training_run_in_progress")],
}


def belongs(node: str, selected: str) -> bool:
    """A collected test (`file::name[params]`) is one a node id selected (a file, or a file::name)."""
    if "::" in selected:
        return node == selected or node.startswith(selected + "[")
    return node.startswith(selected + "::")


def run(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    ids = [node for nodes in PROBES.values() for node in nodes]
    started = dt.datetime.now()
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                            *ids], cwd=ROOT)
    cases = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        outcome = ("failed" if case.find("failure") is not None or case.find("error") is not None
                   else "skipped" if case.find("skipped") is not None else "passed")
        node = f"{case.get('classname').replace('.', '/')}.py::{case.get('name')}"
        family = next((f for f, nodes in PROBES.items() if any(belongs(node, n) for n in nodes)), "other")
        cases.append({"probe": node, "family": family, "outcome": outcome, "seconds": float(case.get("time", 0))})
    counts = {o: sum(c["outcome"] == o for c in cases) for o in ("passed", "failed", "skipped")}
    return {"date": started.isoformat(timespec="seconds"), "pytest_exit": code, "counts": counts, "probes": cases,
            "families": {f: {o: sum(c["outcome"] == o for c in cases if c["family"] == f)
                             for o in ("passed", "failed", "skipped")} for f in PROBES}}


def markdown(result: dict) -> str:
    lines = [f"# Reliability suite, {result['date']}", "",
             "Each probe is a test that reproduces a fault and fails on a traceback, an unclean error, or a lost "
             "or wrong answer; passed = answered cleanly with 0 lost and 0 wrong.", "",
             f"Probes: {len(result['probes'])}; passed {result['counts']['passed']}, failed "
             f"{result['counts']['failed']}, skipped {result['counts']['skipped']} (pytest exit {result['pytest_exit']}).",
             "", "| family | passed | failed | skipped |", "|---|---|---|---|"]
    lines += [f"| {f} | {c['passed']} | {c['failed']} | {c['skipped']} |" for f, c in result["families"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "reliability")
    args = parser.parse_args()
    result = run(args.out)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "README.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0 if result["counts"]["failed"] == 0 and result["pytest_exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
