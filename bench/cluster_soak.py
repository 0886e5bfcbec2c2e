"""The gateway in front of three tritonservers (replicas) under load, one replica killed and
restarted over and over: one run.

    python bench/cluster_soak.py [--artifact ONNX_FP32_DIR] [--soak-seconds 600] [--kill-every 120] [--out DIR]

1. saturation: closed loop, C clients for S seconds through the gateway (`--triton ipv4:A,B,C`,
   gRPC round_robin): requests/s;
2. soak: open loop (Poisson arrivals) at --load (0.8) x that rate for --soak-seconds; every
   --kill-every seconds one replica (the next in turn) gets SIGKILL, to its whole process group,
   and is restarted on its own ports. Every answer is checked against the vector Triton gave its
   text before the soak (a vector for the wrong text counts as wrong). Recorded: requests,
   failures and wrong vectors (both must be 0), p50/p99 per window and overall, gateway and
   each replica's RSS over time, each replica's inference count (its own Triton metrics: traffic
   comes back to a restarted replica) and the gateway's retry counter.

Without --artifact it builds the `tiny` example (2 layers, hidden 64: the CPU goes to the
servers' machinery, not the model) and its fp32 ONNX export under build/cluster-soak. Writes
results.json, results.md and cluster_soak.png to --out (default
bench/results/<date>-<machine>/cluster-soak). Exits 1 when any request failed or any vector was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moai_export.benchmark.async_load import Recorder, closed_loop, measure_saturation, open_loop  # noqa: E402
from moai_export.benchmark.gateway_bench import (  # noqa: E402
    Senders,
    ServingStack,
    client_counts,
    expected_vectors,
    gateway_retries,
    log,
    plot_soak,
    run_on_stack,
    triton_successes,
)
from moai_export.benchmark.result_json import write_json  # noqa: E402
from moai_export.commands.base import EXIT_VERIFICATION_FAILED  # noqa: E402
from moai_export.evaluation.machine import default_results_dir  # noqa: E402
from moai_export.export.triton import TritonOptions  # noqa: E402

MODEL = TritonOptions.name  # the ensemble write_repository names by default
REPLICAS = 3
DOWN_S = 2.0  # how long a killed replica stays down before its restart begins (a pod being rescheduled)


class ReplicaKiller:
    """Every `every` seconds of the soak, SIGKILL the next replica's process group and restart it
    on its ports; each event records when, the replica's inference count once it was ready again
    and, read just before the next kill (or at the end), what it served since."""

    def __init__(self, stack: ServingStack, every: float, seconds: float):
        self.stack, self.every, self.seconds = stack, every, seconds
        self.events: list[dict] = []

    async def served(self) -> list[float]:
        return [await asyncio.to_thread(triton_successes, triton, MODEL) for triton in self.stack.tritons]

    async def close_last_event(self) -> None:
        if self.events:
            last = self.events[-1]
            if "served_at_ready" in last:
                last["served_before_next_kill"] = (await self.served())[last["replica"]]
                last["traffic_returned"] = last["served_before_next_kill"] > last["served_at_ready"]

    async def __call__(self, t0: float) -> None:
        number = 0
        while (number + 1) * self.every < self.seconds:
            number += 1
            await asyncio.sleep(max(0.0, t0 + number * self.every - time.perf_counter()))
            await self.close_last_event()
            victim_index = (number - 1) % len(self.stack.tritons)
            victim = self.stack.tritons[victim_index]
            event = {"replica": victim_index, "killed_s": round(time.perf_counter() - t0, 1)}
            self.events.append(event)
            log(f"SIGKILL replica {victim_index} (pid {victim.process.pid})")
            os.killpg(victim.process.pid, signal.SIGKILL)
            await asyncio.to_thread(victim.process.wait)
            await asyncio.sleep(DOWN_S)
            event["restart_s"] = round(time.perf_counter() - t0, 1)
            try:
                await asyncio.to_thread(victim.restart, 300)  # on its own ports, as a pod behind its Service
            except Exception as exc:  # noqa: BLE001 - recorded; the soak goes on with two replicas
                event["restart_error"] = f"{type(exc).__name__}: {exc}"
                log(f"  restart failed: {event['restart_error']}")
                continue
            event["ready_s"] = round(time.perf_counter() - t0, 1)
            event["served_at_ready"] = (await self.served())[victim_index]
            log(f"  replica {victim_index} ready again at {event['ready_s']} s")


async def run(args, stack: ServingStack, pool: list[str]) -> dict:
    import aiohttp

    expected = await expected_vectors(stack.triton.grpc_url, MODEL, pool)
    results: dict = {"replicas": [t.grpc_url for t in stack.tritons]}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        send_to = Senders(MODEL, pool, session, None, {"gateway": stack.gateway_url})

        def via_gateway(recorder):
            return send_to("gateway", recorder)

        # 1. saturation through the gateway, over all three replicas
        log("warm-up: 5 s")
        await closed_loop(via_gateway(Recorder(expected)), 4, 5, len(pool))
        results["saturation"] = {}
        for clients in args.clients:
            log(f"saturation: {clients} clients, {args.saturation_seconds} s")
            summary = await measure_saturation(partial(send_to, "gateway"), expected, clients,
                                               args.saturation_seconds, len(pool))
            results["saturation"][f"gateway@{clients}"] = summary
            log(f"  {summary['rps']} req/s, p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms")
        saturation = max(v["rps"] for v in results["saturation"].values())
        rate = args.load * saturation
        log(f"saturation {saturation} req/s; soak at {rate:.1f} req/s, a replica killed every {args.kill_every} s")

        # 2. soak with a replica killed and restarted every --kill-every seconds
        soak = Recorder(expected)
        killer = ReplicaKiller(stack, args.kill_every, args.soak_seconds)
        samples = []
        retries_before = await asyncio.to_thread(gateway_retries, stack.gateway_url)

        async def sample_now(t0):
            samples.append({"t": round(time.perf_counter() - t0, 1), **stack.rss(),
                            "served": await killer.served()})

        async def sample(t0):
            while time.perf_counter() - t0 < args.soak_seconds:
                await sample_now(t0)
                await asyncio.sleep(args.sample_every)
            await sample_now(t0)

        async def during(t0):
            await asyncio.gather(killer(t0), sample(t0))

        log(f"soak: {args.soak_seconds} s open loop")
        await open_loop(via_gateway(soak), rate, args.soak_seconds, len(pool), during=during)
        await killer.close_last_event()
        window = args.window
        summary = soak.summary()
        results["soak"] = {
            "rate_rps": round(rate, 2), "seconds": args.soak_seconds, "kill_every_s": args.kill_every, **summary,
            "failed": summary["requests"] - summary["ok"] - summary["wrong_vectors"],
            "gateway_retries": await asyncio.to_thread(gateway_retries, stack.gateway_url) - retries_before,
            "kills": killer.events,
            "windows": [{"start_s": w, **soak.summary(w, w + window)} for w in range(0, int(args.soak_seconds), window)],
            "samples": samples,
        }
        log(f"soak: {json.dumps({k: v for k, v in results['soak'].items() if k not in ('windows', 'samples')})}")
        results["gateway_alive"] = stack.gateway_alive()
    return results


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    soak = results["soak"]
    first, last = soak["samples"][0], soak["samples"][-1]
    lines = [
        f"# Cluster soak: gateway -> {len(results['replicas'])} tritonservers (CPU), gRPC round_robin", "",
        f"machine: {results['machine']}; artifact: {results['artifact']}", "",
        "## Saturation (closed loop through the gateway, 1 text per request)", "",
        "| target@clients | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|",
        *[f"| {k} | {v['rps']} | {v['p50_ms']} | {v['p99_ms']} | {v['requests'] - v['ok']} |"
          for k, v in results["saturation"].items()],
        "", f"## Soak: {soak['seconds']} s open loop at {soak['rate_rps']} req/s, "
            f"a replica SIGKILLed and restarted every {soak['kill_every_s']} s", "",
        f"requests {soak['requests']}, ok {soak['ok']}, **failed {soak['failed']}, wrong vectors "
        f"{soak['wrong_vectors']}**, lost {soak['lost']}; p50 {soak['p50_ms']} ms, p99 {soak['p99_ms']} ms; "
        f"gateway retries {soak['gateway_retries']:.0f}", "",
        "| replica | killed s | restart s | ready again s | served at ready | served before next kill | traffic returned |",
        "|---|---|---|---|---|---|---|",
        *[f"| {e['replica']} | {e['killed_s']} | {e.get('restart_s')} | {e.get('ready_s', e.get('restart_error'))} | "
          f"{e.get('served_at_ready')} | {e.get('served_before_next_kill')} | {e.get('traffic_returned')} |"
          for e in soak["kills"]],
        "", "| window start s | requests | p50 ms | p99 ms | failed | wrong |", "|---|---|---|---|---|---|",
        *[f"| {w['start_s']} | {w['requests']} | {w['p50_ms']} | {w['p99_ms']} | "
          f"{w['requests'] - w['ok'] - w['wrong_vectors']} | {w['wrong_vectors']} |" for w in soak["windows"]],
        "", "RSS MiB (gateway; each replica's process group) and each replica's successful inferences since its "
            "last start:", "",
        "| t s | gateway MiB | replicas MiB | replicas served |", "|---|---|---|---|",
        *[f"| {s['t']} | {s['gateway_mb']} | {s['triton_mb_each']} | {[int(n) for n in s['served']]} |"
          for s in soak["samples"]],
        "", f"RSS start: gateway {first['gateway_mb']} MiB, replicas {first['triton_mb_each']}; "
            f"end: gateway {last['gateway_mb']} MiB, replicas {last['triton_mb_each']}",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    memory = {"gateway RSS": lambda s: s["gateway_mb"]}
    for replica in range(len(results["replicas"])):
        memory[f"Triton {replica} RSS"] = lambda s, replica=replica: s["triton_mb_each"][replica]
    plot_soak(out / "cluster_soak.png", f"cluster soak at {soak['rate_rps']} req/s (red: a replica killed)",
              soak["windows"], soak["samples"], memory, marks=[event["killed_s"] for event in soak["kills"]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=None, help="fp32 ONNX artifact (default: build the tiny example)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "cluster-soak")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--clients", type=client_counts, default="8,16", help="closed-loop clients for saturation")
    parser.add_argument("--saturation-seconds", type=float, default=20)
    parser.add_argument("--load", type=float, default=0.8, help="soak rate as a fraction of saturation")
    parser.add_argument("--soak-seconds", type=int, default=600)
    parser.add_argument("--kill-every", type=float, default=120, help="seconds between replica kills")
    parser.add_argument("--window", type=int, default=30, help="seconds per p50/p99 window")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds between RSS / inference-count samples")
    parser.add_argument("--max-queue", type=int, default=None,
                        help="gateway --max-queue (429 beyond); default: the gateway's own (as users run it)")
    args = parser.parse_args()
    results = run_on_stack(args, run, size="tiny", replicas=REPLICAS)
    out = args.out or default_results_dir("cluster-soak")
    write_report(results, out)
    log(f"results: {out}")
    soak = results["soak"]
    if soak["failed"] or soak["wrong_vectors"]:
        log(f"FAIL: {soak['failed']} failed, {soak['wrong_vectors']} wrong vectors")
        return EXIT_VERIFICATION_FAILED  # as a failed gate: the deployment did not hold
    return 0


if __name__ == "__main__":
    sys.exit(main())
