"""The gateway under sustained load and faults: gateway -> Triton (CPU), one run.

    python bench/gateway_soak.py [--artifact ONNX_FP32_DIR] [--soak-seconds 600] [--out DIR]

1. saturation: closed loop, C clients for S seconds, through the gateway and against Triton's gRPC
   directly (same texts, same server): requests/s, p50/p99 and the gateway's overhead;
2. soak: open loop (Poisson arrivals) at --load (0.8) x the gateway's saturation rate for
   --soak-seconds: every answer is checked against the vector Triton gives that text (a vector for
   the wrong text counts as wrong), p50/p99 per window, gateway and Triton RSS over time;
3. faults, each under the same open-loop load: Triton restarted mid-run (503 + Retry-After while it
   is down, then recovery without a gateway restart), clients that disconnect mid-request, and a
   burst at 3x saturation (429/503 refusals allowed; none lost: every request gets an answer).

Without --artifact it builds the `small` example (4 layers, hidden 256) and its fp32 ONNX export
under build/soak. Writes results.json, results.md and soak.png to --out (default
bench/results/<date>-<machine>/gateway-soak).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moai_export.benchmark.async_load import Recorder, closed_loop, measure_saturation, open_loop  # noqa: E402
from moai_export.benchmark.gateway_bench import (
    TRITON_DIRECT,
    Senders,
    ServingStack,
    client_counts,
    expected_vectors,
    gateway_request,
    log,
    plot_soak,
    run_on_stack,
)
from moai_export.evaluation.machine import default_results_dir  # noqa: E402
from moai_export.export.triton import TritonOptions  # noqa: E402

MODEL = TritonOptions.name  # the ensemble write_repository names by default


async def run(args, stack: ServingStack, pool: list[str]) -> dict:
    import aiohttp
    import tritonclient.grpc.aio as grpc_aio

    expected = await expected_vectors(stack.triton.grpc_url, MODEL, pool)
    results: dict = {"saturation": {}, "faults": {}}
    connector = aiohttp.TCPConnector(limit=0)
    client = grpc_aio.InferenceServerClient(stack.triton.grpc_url)
    async with aiohttp.ClientSession(connector=connector) as session:
        send_to = Senders(MODEL, pool, session, client, {"gateway": stack.gateway_url})

        def via_gateway(recorder):
            return send_to("gateway", recorder)

        # 1. saturation, gateway and Triton direct in the same run (alternating, best of each)
        log("warm-up: 5 s each way")
        for target in ("gateway", TRITON_DIRECT):
            await closed_loop(send_to(target, Recorder(expected)), 4, 5, len(pool))
        for clients in args.clients:
            for target in (TRITON_DIRECT, "gateway"):
                log(f"saturation: {target}, {clients} clients, {args.saturation_seconds} s")
                summary = await measure_saturation(partial(send_to, target), expected, clients,
                                                   args.saturation_seconds, len(pool))
                results["saturation"][f"{target}@{clients}"] = summary
                log(f"  {summary['rps']} req/s, p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms")
        await client.close()
        best = {t: max(v["rps"] for k, v in results["saturation"].items() if k.startswith(t))
                for t in ("gateway", TRITON_DIRECT)}
        saturation = best["gateway"]
        results["saturation_rps"] = best
        results["gateway_overhead_pct"] = round(100 * (1 - best["gateway"] / best[TRITON_DIRECT]), 1)
        rate = args.load * saturation
        log(f"saturation {saturation} req/s (Triton direct {best[TRITON_DIRECT]}); soak at {rate:.1f} req/s")

        # 2. soak
        soak = Recorder(expected)
        samples = []

        async def sample(t0):
            while time.perf_counter() - t0 < args.soak_seconds:
                samples.append({"t": round(time.perf_counter() - t0, 1), **stack.rss()})
                await asyncio.sleep(min(30, args.soak_seconds / 10))
            samples.append({"t": round(time.perf_counter() - t0, 1), **stack.rss()})

        log(f"soak: {args.soak_seconds} s open loop")
        await open_loop(via_gateway(soak), rate, args.soak_seconds, len(pool), during=sample)
        window = args.window
        results["soak"] = {
            "rate_rps": round(rate, 2), "seconds": args.soak_seconds, **soak.summary(),
            "windows": [{"start_s": w, **soak.summary(w, w + window)}
                        for w in range(0, int(args.soak_seconds), window)],
            "rss": samples,
        }
        log(f"soak: {json.dumps({k: v for k, v in results['soak'].items() if k not in ('windows', 'rss')})}")

        # 3a. Triton restart under load
        restart = Recorder(expected)
        times = {}

        async def restart_triton(t0):
            await asyncio.sleep(args.fault_seconds / 4)
            times["stop"] = time.perf_counter() - t0
            await asyncio.to_thread(stack.triton.stop)
            times["stopped"] = time.perf_counter() - t0
            await asyncio.sleep(3)
            await asyncio.to_thread(stack.triton.start, 300)
            times["ready"] = time.perf_counter() - t0

        log("fault: Triton restart under load")
        await open_loop(via_gateway(restart), rate, args.fault_seconds, len(pool), during=restart_triton)
        after_ready = [o for o in restart.outcomes if o.sent > times["ready"] + 2]
        results["faults"]["triton_restart"] = {
            **restart.summary(), "events_s": {k: round(v, 1) for k, v in times.items()},
            "gateway_restarted": False, "gateway_pid_unchanged": stack.gateway_alive(),
            "ok_after_recovery": sum(o.status == 200 for o in after_ready), "requests_after_recovery": len(after_ready),
            "first_ok_after_ready_s": restart.first_ok_after(times["ready"]),
        }
        log(f"  {json.dumps(results['faults']['triton_restart'])}")

        # 3b. clients that disconnect mid-request, then the gateway must still serve
        disconnects = Recorder(expected)
        log("fault: 200 client disconnects mid-request")
        t0 = time.perf_counter()
        await asyncio.gather(*(gateway_request(session, stack.gateway_url, MODEL, pool, i % len(pool), "query",
                                               disconnects, t0, timeout=0.005) for i in range(200)))
        check = Recorder(expected)
        await closed_loop(via_gateway(check), 4, 10, len(pool))
        results["faults"]["client_disconnect"] = {
            "disconnected": sum(o.status == "TimeoutError" or o.status == "ServerTimeoutError" for o in disconnects.outcomes),
            "answered_before_disconnect": sum(o.status == 200 for o in disconnects.outcomes),
            "after": check.summary(), "gateway_alive": stack.gateway_alive(),
        }
        log(f"  {json.dumps(results['faults']['client_disconnect'])}")

        # 3c. burst at 3x saturation
        burst = Recorder(expected)
        log(f"fault: burst at {3 * saturation:.1f} req/s for {args.burst_seconds} s")
        await open_loop(via_gateway(burst), 3 * saturation, args.burst_seconds, len(pool))
        results["faults"]["burst_3x"] = {"rate_rps": round(3 * saturation, 2), "seconds": args.burst_seconds,
                                         **burst.summary(), "gateway_alive": stack.gateway_alive()}
        log(f"  {json.dumps(results['faults']['burst_3x'])}")
        results["rss_end"] = stack.rss()
    return results


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    soak = results["soak"]
    lines = [
        "# Gateway soak: gateway -> Triton (CPU)", "",
        f"machine: {results['machine']}; artifact: {results['artifact']}", "",
        "## Saturation (closed loop, 1 text per request)", "",
        "| target@clients | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|",
        *[f"| {k} | {v['rps']} | {v['p50_ms']} | {v['p99_ms']} | {v['requests'] - v['ok']} |"
          for k, v in results["saturation"].items()],
        "", f"Gateway overhead at saturation vs Triton gRPC direct (1 - gateway / direct, best client count "
            f"of each): {results['gateway_overhead_pct']} % (negative: the gateway was faster).", "",
        f"## Soak: {soak['seconds']} s open loop at {soak['rate_rps']} req/s", "",
        f"requests {soak['requests']}, ok {soak['ok']}, failed {soak['requests'] - soak['ok']}, "
        f"wrong vectors {soak['wrong_vectors']}, lost {soak['lost']}; p50 {soak['p50_ms']} ms, p99 {soak['p99_ms']} ms", "",
        "| window start s | requests | p50 ms | p99 ms | failed |", "|---|---|---|---|---|",
        *[f"| {w['start_s']} | {w['requests']} | {w['p50_ms']} | {w['p99_ms']} | {w['requests'] - w['ok']} |"
          for w in soak["windows"]],
        "", f"RSS start: {soak['rss'][0]}; end: {soak['rss'][-1]}", "", "## Faults", "",
    ]
    for name, fault in results["faults"].items():
        lines.append(f"- **{name}**: `{json.dumps(fault)}`")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot_soak(out / "soak.png", f"gateway soak at {soak['rate_rps']} req/s", soak["windows"], soak["rss"],
              {"gateway RSS": lambda s: s["gateway_mb"], "Triton RSS": lambda s: s["triton_mb"]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=None, help="fp32 ONNX artifact (default: build the small example)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "soak")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--clients", type=client_counts, default="8,16", help="closed-loop clients for saturation")
    parser.add_argument("--saturation-seconds", type=float, default=20)
    parser.add_argument("--soak-seconds", type=int, default=600)
    parser.add_argument("--window", type=int, default=30, help="seconds per p50/p99 window")
    parser.add_argument("--load", type=float, default=0.8, help="soak rate as a fraction of saturation")
    parser.add_argument("--fault-seconds", type=float, default=60)
    parser.add_argument("--burst-seconds", type=float, default=20)
    parser.add_argument("--max-queue", type=int, default=None,
                        help="gateway --max-queue (429 beyond); default: the gateway's own (as users run it)")
    args = parser.parse_args()
    results = run_on_stack(args, run, size="small")
    out = args.out or default_results_dir("gateway-soak")
    write_report(results, out)
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
