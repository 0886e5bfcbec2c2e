"""vLLM vs in-process torch on the same full-size model (0.6B shape, fp32 weights), one run.

    python bench/vllm_full.py [--merged build/bench-full/merged-fp32] [--out bench/results/...]

Exports the vLLM directory (gated on a real engine), starts the server, and runs
`moai-bench throughput` with: torch fp32 in-process (baseline), vLLM offline fp32, vLLM offline
bf16 (this CPU has AVX512-BF16), and the vLLM server (fp32, /v2/embed). 64-token documents.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from moai_export.evaluation.machine import default_results_dir
from moai_export.export.vllm import VllmOptions, export_vllm
from moai_export.launchers.process import free_ports
from moai_export.launchers.vllm_server import VllmServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--merged", type=Path, default=Path("build/bench-full/merged-fp32"))
    parser.add_argument("--vllm-dir", type=Path, default=Path("build/bench-full/vllm"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--seconds", default="30")
    args = parser.parse_args()
    out = args.out or default_results_dir("vllm-full")
    if not (args.vllm_dir / "moai_parity.json").is_file():
        export_vllm(args.merged, args.vllm_dir, options=VllmOptions(force=True))
    (port,) = free_ports(1)
    with VllmServer(args.vllm_dir, port=port, log_path=args.vllm_dir.parent / "vllm-server.log").start(timeout=600):
        command = [
            sys.executable, "-m", "moai_export.commands.bench_cli", "throughput",
            "--target", f"torch-fp32=torch:{args.merged}",
            "--target", f"vllm-offline-fp32=vllm:{args.vllm_dir}",
            "--target", f"vllm-offline-bf16=vllm:{args.vllm_dir}?dtype=bfloat16",
            "--target", f"vllm-server-fp32=vllm-http://127.0.0.1:{port}/moai-embedding",
            "--tokens", "64", "--texts", "96", "--batch-sizes", args.batch_sizes, "--concurrency", "1",
            "--requests", "0", "--seconds", args.seconds, "--warmup", "1", "--out", str(out),
        ]
        return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
