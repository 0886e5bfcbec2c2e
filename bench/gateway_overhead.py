"""The gateway's overhead over Triton gRPC direct at saturation, optionally beside another
gateway build (a baseline source tree), all in one run against one Triton.

    python bench/gateway_overhead.py [--artifact ONNX_FP32_DIR] [--rounds 3] [--out DIR]
    python bench/gateway_overhead.py --baseline /tmp/old-checkout --baseline-arg=--tokenizer \
        --baseline-arg='{repo}' --baseline-pure-python

Each round runs every target back to back (closed loop, --clients clients, --seconds each):
Triton's gRPC endpoint directly, this tree's gateway and, with --baseline, the gateway of that
source tree (`{repo}` in --baseline-arg is the Triton repository; --baseline-pure-python hides
uvloop and httptools from it, so uvicorn falls back to asyncio and h11, as before they were
dependencies). Overhead = 1 - gateway req/s / Triton direct req/s, per round; the median is
reported. Every answer is checked against the vector Triton gives that text. Writes
results.json and results.md to --out (default bench/results/<date>-<machine>/gateway-overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moai_export.benchmark.async_load import Recorder, closed_loop, measure_saturation  # noqa: E402
from moai_export.benchmark.gateway_bench import (
    TRITON_DIRECT,
    Senders,
    ServingStack,
    build_onnx_artifact,
    expected_vectors,
    log,
    texts_pool,
)
from moai_export.evaluation.machine import default_results_dir, machine_slug  # noqa: E402
from moai_export.export.triton import TritonOptions, write_repository  # noqa: E402
from moai_export.launchers.gateway_server import GatewayServer  # noqa: E402
from moai_export.launchers.triton_server import free_ports  # noqa: E402

MODEL = TritonOptions.name  # the ensemble write_repository names by default
HIDE_C_PARSERS = "sys.modules['uvloop'] = None; sys.modules['httptools'] = None; "


@dataclass
class SourceGateway(GatewayServer):
    """The launcher's gateway, imported from `source` (another checkout), optionally without the
    C event loop and HTTP parser (uvicorn then falls back to asyncio and h11)."""

    source: Path = ROOT
    pure_python: bool = False

    def command(self) -> tuple[list[str], dict[str, str]]:
        command, env = super().command()  # [python, -m, moai_export.commands.export_cli, gateway, ...]
        code = (f"import sys; sys.path.insert(0, {str(self.source)!r}); "
                + (HIDE_C_PARSERS if self.pure_python else "") + "from moai_export.commands.export_cli import main; main()")
        return [sys.executable, "-c", code, *command[3:]], env


async def measure(args, triton_grpc: str, gateways: dict[str, str], pool: list[str]) -> dict:
    import aiohttp
    import tritonclient.grpc.aio as grpc_aio

    expected = await expected_vectors(triton_grpc, MODEL, pool)
    client = grpc_aio.InferenceServerClient(triton_grpc)
    rounds = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        send_to = Senders(MODEL, pool, session, client, gateways)
        targets = [TRITON_DIRECT, *gateways]
        log("warm-up: 5 s each")
        for target in targets:
            await closed_loop(send_to(target, Recorder(expected)), 4, 5, len(pool))
        for number in range(args.rounds):
            row = {}
            for target in targets:
                summary = await measure_saturation(partial(send_to, target), expected, args.clients, args.seconds,
                                                   len(pool))
                row[target] = summary
                log(f"round {number + 1}: {target} {summary['rps']} req/s, p50 {summary['p50_ms']} ms, "
                    f"failed {summary['requests'] - summary['ok']}, wrong {summary['wrong_vectors']}")
            rounds.append(row)
    await client.close()
    overhead = {target: [round(100 * (1 - r[target]["rps"] / r[TRITON_DIRECT]["rps"]), 1) for r in rounds]
                for target in gateways}
    return {"rounds": rounds, "overhead_pct": overhead,
            "median_overhead_pct": {t: statistics.median(v) for t, v in overhead.items()}}


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    targets = list(results["rounds"][0])
    lines = ["# Gateway overhead over Triton gRPC direct (CPU, saturation)", "",
             f"machine: {results['machine']}; {results['args']['clients']} clients, {results['args']['seconds']} s "
             f"per target, targets back to back in each round; 1 text per request", "",
             "| round | " + " | ".join(f"{t} req/s" for t in targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for number, row in enumerate(results["rounds"], 1):
        lines.append(f"| {number} | " + " | ".join(str(row[t]["rps"]) for t in targets) + " |")
    lines += ["", "| gateway | overhead per round % | median % |", "|---|---|---|"]
    for target, values in results["overhead_pct"].items():
        lines.append(f"| {target} | {', '.join(map(str, values))} | {results['median_overhead_pct'][target]} |")
    lines += ["", *[f"- **{t}**: {d}" for t, d in results["targets"].items()]]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=None, help="fp32 ONNX artifact (default: build the small example)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "soak")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None, help="source tree of another gateway to measure beside")
    parser.add_argument("--baseline-arg", action="append", default=[], help="extra argument for it ({repo}: the repository)")
    parser.add_argument("--baseline-pure-python", action="store_true", help="hide uvloop and httptools from it")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    artifact = args.artifact or build_onnx_artifact(args.work, log)
    repo = args.work / "models"
    write_repository(artifact, repo, TritonOptions(max_batch_size=16, verify="none", force=True), log=log)
    stack = ServingStack(repo, args.work, MODEL, 256)
    stack.triton.start(timeout=300)
    servers, gateways, described = [], {}, {}
    limits = ["--max-queue", "256", "--timeout", "15"]
    try:
        ports = free_ports(2)
        servers.append(SourceGateway(stack.triton.grpc_url, MODEL, port=ports[0], extra_args=limits,
                                     log_path=args.work / "gateway.log").start())
        gateways["gateway"] = servers[-1].base_url
        described["gateway"] = f"this tree ({_commit(ROOT)})"
        if args.baseline:
            extra = limits + [a.replace("{repo}", str(repo)) for a in args.baseline_arg]
            servers.append(SourceGateway(stack.triton.grpc_url, MODEL, port=ports[1], extra_args=extra,
                                         log_path=args.work / "gateway-baseline.log", source=args.baseline.absolute(),
                                         pure_python=args.baseline_pure_python).start())
            gateways["baseline"] = servers[-1].base_url
            described["baseline"] = (f"{args.baseline} ({_commit(args.baseline)})"
                                     + (", asyncio + h11 (uvloop/httptools hidden)" if args.baseline_pure_python else ""))
        results = asyncio.run(measure(args, stack.triton.grpc_url, gateways, texts_pool(200)))
    finally:
        for server in servers:
            server.stop()
        stack.triton.stop()
    results.update(machine=machine_slug(), artifact=str(artifact), targets=described,
                   args={k: str(v) for k, v in vars(args).items() if k not in ("work", "out", "artifact")})
    out = args.out or default_results_dir("gateway-overhead")
    write_report(results, out)
    log(f"median overhead: {results['median_overhead_pct']}; results: {out}")
    return 0


def _commit(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"


if __name__ == "__main__":
    sys.exit(main())
