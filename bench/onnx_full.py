"""Measure `moai-export onnx` on the full-size example (Qwen3-Embedding-0.6B shape).

    python bench/onnx_full.py [--work build/bench-full] [--out bench/results/DATE-MACHINE] [--precision fp32 ...]

Exports `WORK/merged-fp32` once per precision in a child process (export + parity gate against
the fp32 torch model) and records its wall time and peak RSS (os.wait4 gives the child's own
rusage, so one precision's peak cannot hide another's). Writes OUT/onnx-export-full.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from moai_export.evaluation.machine import machine_description


def run(cmd: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB of the child, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, proc.returncode


def size_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/bench-full"))
    parser.add_argument("--out", type=Path, default=Path("bench/results") / dt.date.today().isoformat())
    parser.add_argument("--precision", action="append", choices=["fp32", "fp16", "int8"])
    args = parser.parse_args()
    merged = args.work / "merged-fp32"
    if not (merged / "moai_contract.json").is_file():
        sys.exit(f"error: {merged} is missing; run python bench/merge_full.py first")
    rows = []
    for precision in args.precision or ["fp32", "int8"]:
        out = args.work / f"onnx-{precision}"
        cmd = [sys.executable, "-m", "moai_export.commands.export_cli", "onnx", str(merged), "--out", str(out),
               "--precision", precision, "--force"]
        wall, peak, code = run(cmd)
        report_path = out / "moai_parity.json"
        report = json.loads(report_path.read_text()) if code == 0 and report_path.is_file() else {}
        rows.append({"precision": precision, "exit_code": code, "wall_s": round(wall, 1),
                     "peak_rss_mb_child": round(peak), "artifact_mb": round(size_mb(out)) if out.is_dir() else None,
                     "report": report})
        print(f"{precision}: exit {code}, {wall:.1f} s, peak RSS {peak:.0f} MB", flush=True)
    date = dt.date.today().isoformat()
    result = {"benchmark": "ONNX export of the full-size merged example (28 layers, hidden 1024, 0.6B params), "
                           "each with its parity gate against fp32 torch",
              "date": date, "machine": machine_description(), "exports": rows,
              "command": "python bench/onnx_full.py"}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "onnx-export-full"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(f"written {stem}.json and .md")


def markdown(result: dict) -> str:
    lines = [f"# ONNX export, full-size example, {result['date']}", "", f"machine: {result['machine']['summary']}",
             "", "Wall time and peak RSS of the whole `moai-export onnx` process: fp32 torch reference on the probe "
             "set, export (+ quantization), and the gate (ONNX Runtime on the probe set).", "",
             "| precision | exit | wall (s) | peak RSS (MB) | artifact (MB) | reference (s) | export (s) | verify (s) "
             "| min cos | mean cos | top-10 agreement |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["exports"]:
        t, g = r["report"].get("timings", {}), r["report"].get("gate", {})
        lines.append(f"| {r['precision']} | {r['exit_code']} | {r['wall_s']} | {r['peak_rss_mb_child']} | "
                     f"{r['artifact_mb']} | {t.get('reference_s', '-')} | {t.get('export_s', '-')} | "
                     f"{t.get('verify_s', '-')} | {g.get('min_cosine', float('nan')):.6f} | "
                     f"{g.get('mean_cosine', float('nan')):.6f} | {g.get('rank_agreement_top10', '-')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
