"""Triton's dynamic batcher on CPU: which queue delay and preferred batch sizes serve best, measured.

    python bench/triton_batching.py [--artifact ONNX_DIR] [--dataset ../shared/data/datasets/autorag-ko] \
        [--rounds 2] [--seconds 20] [--out DIR]

One tritonserver per candidate configuration (each its own repository of the same artifact, all
started before measuring, idle ones cost no CPU), then `moai-bench throughput` against all of
them side by side, the candidates interleaved round by round (best round reported), in two
served workloads: the dataset's passages (long documents, 8 per request, 8 clients: an indexing
client) and its queries (1 per request, 8 clients: search traffic). The first candidate is the
repository's current default, so every ratio reads "this configuration / today's default".

Without --artifact it builds the `small` example's fp32 ONNX under build/triton-batching. Writes
moai-bench's results.json/summary.md and this study's batching.md to --out (default
bench/results/<date>-<machine>/triton-batching).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moai_export.benchmark.gateway_bench import build_onnx_artifact, log  # noqa: E402
from moai_export.evaluation.machine import default_results_dir  # noqa: E402
from moai_export.export.triton import TritonOptions, write_repository  # noqa: E402
from moai_export.launchers.triton_server import TritonServer, free_ports  # noqa: E402

# label -> (max_queue_delay_us, preferred_batch_sizes, encoder instances); the first is the default
CANDIDATES = {
    "default": (TritonOptions.max_queue_delay_us, TritonOptions.preferred_batch_sizes, TritonOptions.instances),
    "no-delay": (0, (), 1),
    "delay-2ms-no-preferred": (2000, (), 1),
    "delay-10ms": (10000, TritonOptions.preferred_batch_sizes, 1),
    "2-instances": (TritonOptions.max_queue_delay_us, TritonOptions.preferred_batch_sizes, 2),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=None, help="ONNX artifact (default: build the small example)")
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/data/datasets/autorag-ko")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "triton-batching")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--limit", type=int, default=256, help="texts per workload")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    artifact = args.artifact or build_onnx_artifact(args.work, log, size="small")
    out = args.out or default_results_dir("triton-batching")
    servers = []
    for label, (delay, preferred, instances) in CANDIDATES.items():
        repo = args.work / "repos" / label
        write_repository(artifact, repo, TritonOptions(max_queue_delay_us=delay, preferred_batch_sizes=preferred,
                                                       instances=instances, verify="none", force=True), log=log)
        servers.append((label, repo, free_ports(3)))
    with contextlib.ExitStack() as stack:
        targets = []
        for label, repo, (http, grpc, metrics) in servers:
            log(f"starting tritonserver for {label}")
            stack.enter_context(TritonServer(repo, http, grpc, metrics, log_path=repo.parent / f"{label}.log")
                                .start(timeout=300))
            targets += ["--target", f"{label}=triton-grpc://127.0.0.1:{grpc}/{TritonOptions.name}"]
        for workload, batch in (("document", "8"), ("query", "1")):
            command = [str(Path(sys.executable).parent / "moai-bench"), "throughput", *targets,
                       "--workload", str(args.dataset), "--kind", workload, "--limit", str(args.limit),
                       "--tokenizer", str(artifact), "--batch-sizes", batch, "--concurrency", "8",
                       "--requests", "0", "--seconds", str(args.seconds), "--warmup", "2",
                       "--rounds", str(args.rounds), "--out", str(out / workload), "--quiet"]
            log(f"measuring {workload}s: {len(CANDIDATES)} configurations x {args.rounds} rounds")
            subprocess.run(command, check=True)
    write_summary(out)
    log(f"results: {out}")
    return 0


def write_summary(out: Path) -> None:
    """batching.md: sentences/s and p99 of every configuration per workload, and its ratio to the default."""
    lines = ["# Triton dynamic batching on CPU: configurations side by side", "",
             "| configuration | queue delay us | preferred | instances |", "|---|---|---|---|"]
    lines += [f"| {label} | {d} | {list(p) or '-'} | {i} |" for label, (d, p, i) in CANDIDATES.items()]
    for workload in ("document", "query"):
        results = json.loads((out / workload / "results.json").read_text(encoding="utf-8"))
        rows = results["results"]  # one row per cell x target (the best round of each)
        lines += ["", f"## {'queries' if workload == 'query' else 'documents'} (autorag-ko)", "", "| configuration | sentences/s | vs default | p50 ms | p99 ms |",
                  "|---|---|---|---|---|"]
        by_label = {r["target"]: r for r in rows}
        base = by_label.get("default", {}).get("sentences_per_s")
        for label in CANDIDATES:
            r = by_label.get(label)
            if r:
                ratio = r["sentences_per_s"] / base if base else float("nan")
                lines.append(f"| {label} | {r['sentences_per_s']:.1f} | {ratio:.2f} | {r['latency_ms']['p50']:.0f} | "
                             f"{r['latency_ms']['p99']:.0f} |")
    (out / "batching.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
