"""Measure `moai-export merge` on the full-size example (Qwen3-Embedding-0.6B shape).

    python bench/merge_full.py [--work build/bench-full] [--out bench/results]

Builds the full-size example once (random weights, 2 LoRA steps), then runs the merge CLI in
a child process and records wall time and peak RSS of that process (merge + verification),
plus the phase timings from the merge report. Writes merge-full-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def machine() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except (OSError, ValueError):
        pass
    return info


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB of the child)."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/bench-full"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--dtype", default="fp32")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "moai_export.commands.export_cli"]
    example = args.work / "example"
    if not (example / "adapter" / "adapter_config.json").is_file():
        subprocess.run(cli + ["example", "--out", str(example), "--size", "full", "--steps", "2", "--force"],
                       check=True)
    merged = args.work / f"merged-{args.dtype}"
    wall, peak = run(cli + ["merge", "--base", str(example / "base"), "--adapter", str(example / "adapter"),
                            "--out", str(merged), "--dtype", args.dtype, "--force"])
    report = json.loads((merged / "moai_parity.json").read_text())
    result = {
        "benchmark": "merge of the full-size example (28 layers, hidden 1024, 0.6B params)",
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "dtype": args.dtype,
        "wall_s": round(wall, 1),
        "peak_rss_mb_child": round(peak),
        "phases_s": report["timings"],
        "parity": [{k: p[k] for k in ("candidate", "min_cosine", "max_abs", "passed")} for p in report["gates"]],
        "adapter_effect_min_cos": report["checks"]["adapter_effect"]["min_cosine_base_vs_reference"],
        "command": "python bench/merge_full.py",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"merge-full-{args.dtype}-{result['date']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# merge, full-size example ({args.dtype}), {result['date']}",
        "",
        f"machine: {result['machine']}",
        "",
        "| wall (s) | peak RSS (MB) | load (s) | reference probes (s) | merge (s) | write (s) | verify (s) "
        "| min cos merged | min cos ST |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {result['wall_s']} | {result['peak_rss_mb_child']} | {report['timings'].get('load_s')} | "
        f"{report['timings'].get('reference_probes_s')} | {report['timings'].get('merge_s')} | "
        f"{report['timings'].get('write_s')} | {report['timings'].get('verify_s')} | "
        f"{result['parity'][0]['min_cosine']:.7f} | {result['parity'][-1]['min_cosine']:.7f} |",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
