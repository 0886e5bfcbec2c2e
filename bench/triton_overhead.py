"""Triton's overhead: the same ONNX artifact in-process (ONNX Runtime) vs through a real local
tritonserver (HTTP and gRPC), measured side by side by `moai-bench throughput`.

    python bench/triton_overhead.py [--artifact build/bench-full/onnx-int8] [--out bench/results/...]

Writes a Triton repository for the artifact (python-backend encoder: the only one the local
server has), starts tritonserver on free loopback ports, and runs moai-bench with the
in-process target first, so every ratio is "Triton / in-process" under the same load.
Saturation = the highest closed-loop concurrency.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from moai_export.evaluation.machine import default_results_dir
from moai_export.export.triton import TritonOptions, write_repository
from moai_export.launchers.triton_server import TritonServer, free_ports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=Path("build/bench-full/onnx-int8"))
    parser.add_argument("--repo", type=Path, default=Path("build/bench-triton/models"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--batch-sizes", default="8")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--tokens", default="64")
    parser.add_argument("--seconds", default="25")
    parser.add_argument("--max-queue-delay-us", type=int, default=5000)
    parser.add_argument("--intra-op-threads", type=int, default=0, help="encoder onnxruntime threads (0: default)")
    parser.add_argument("--instances", type=int, default=1)
    args = parser.parse_args()
    out = args.out or default_results_dir(f"triton-overhead-{args.artifact.name}")
    write_repository(args.artifact, args.repo, TritonOptions(
        max_batch_size=32, max_queue_delay_us=args.max_queue_delay_us, intra_op_threads=args.intra_op_threads,
        instances=args.instances, force=True))
    http, grpc, metrics = free_ports(3)
    with TritonServer(args.repo, http, grpc, metrics, log_path=args.repo.parent / "server.log").start(timeout=300):
        command = [
            sys.executable, "-m", "moai_export.commands.bench_cli", "throughput",
            "--target", f"in-process=onnx:{args.artifact}",
            "--target", f"triton-grpc=triton-grpc://127.0.0.1:{grpc}/moai_embedding",
            "--target", f"triton-http=triton-http://127.0.0.1:{http}/moai_embedding",
            "--tokenizer", str(args.artifact),
            "--tokens", args.tokens, "--texts", "128", "--batch-sizes", args.batch_sizes,
            "--concurrency", args.concurrency, "--requests", "0", "--seconds", args.seconds, "--warmup", "2",
            "--out", str(out),
        ]
        return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
