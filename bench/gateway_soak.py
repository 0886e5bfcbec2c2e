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
import base64
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moai_export.evaluation.machine import default_results_dir  # noqa: E402
from moai_export.serving.gateway_server import GatewayServer  # noqa: E402
from moai_export.serving.process import group_members  # noqa: E402
from moai_export.serving.triton_server import TritonServer, free_ports  # noqa: E402

MODEL = "moai_embedding"
KINDS = ("query", "document")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- set-up ---------------------------------------------------------------------------------------

def build_artifact(work: Path) -> Path:
    from moai_export.example import build_example
    from moai_export.export.onnx import OnnxOptions, export_onnx
    from moai_export.merge import MergeOptions, merge

    onnx_dir = work / "onnx-fp32"
    if (onnx_dir / "model.onnx").is_file():
        return onnx_dir
    example = work / "example"
    if not (example / "adapter").is_dir():
        build_example(example, size="small", seed=0, steps=8, force=True, progress=False)
    merged = work / "merged"
    if not (merged / "config.json").is_file():
        merge(str(example / "base"), str(example / "adapter"), merged, MergeOptions(log=log))
    export_onnx(merged, onnx_dir, options=OnnxOptions(log=log))
    return onnx_dir


def texts_pool(n: int, seed: int = 0) -> list[str]:
    """Short Korean / English retrieval texts of varied length."""
    words = ("카드 연회비 해외 결제 수수료 포인트 적립 한도 상향 분실 신고 재발급 자동이체 할부 이자 "
             "card annual fee foreign payment points limit lost report reissue installment interest statement").split()
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(4, 40))) for i in range(n)]


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


# -- one request, recorded ---------------------------------------------------------------------------

@dataclass
class Outcome:
    sent: float  # seconds since the phase start
    latency: float
    status: int | str  # HTTP status, or the exception's name (a lost request)
    wrong: bool = False
    retry_after: bool = False


@dataclass
class Recorder:
    expected: dict  # (text index, kind) -> unit vector
    outcomes: list = field(default_factory=list)

    def summary(self, start: float = 0.0, end: float = float("inf")) -> dict:
        rows = [o for o in self.outcomes if start <= o.sent < end]
        ok = [o.latency for o in rows if o.status == 200 and not o.wrong]
        counts: dict = {}
        for o in rows:
            counts[str(o.status)] = counts.get(str(o.status), 0) + 1
        refused = [o for o in rows if o.status in (429, 503)]
        return {
            "requests": len(rows), "ok": len(ok), "status_counts": counts,
            "wrong_vectors": sum(o.wrong for o in rows),
            "refused_429_503": len(refused), "refused_without_retry_after": sum(not o.retry_after for o in refused),
            "lost": sum(1 for o in rows if not isinstance(o.status, int) or o.status not in (200, 429, 503, 499)),
            "p50_ms": round(1000 * float(np.percentile(ok, 50)), 1) if ok else None,
            "p99_ms": round(1000 * float(np.percentile(ok, 99)), 1) if ok else None,
        }


async def gateway_request(session, url: str, pool: list[str], index: int, kind: str, recorder: Recorder,
                          t0: float, timeout: float = 60.0) -> None:
    import aiohttp

    sent = time.perf_counter()
    payload = {"model": MODEL, "input": [pool[index]], "input_type": kind, "encoding_format": "base64"}
    try:
        async with session.post(f"{url}/v1/embeddings", json=payload,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            body = await response.read()
            outcome = Outcome(sent - t0, time.perf_counter() - sent, response.status,
                              retry_after="Retry-After" in response.headers)
            if response.status == 200:
                vector = np.frombuffer(base64.b64decode(json.loads(body)["data"][0]["embedding"]), dtype="<f4")
                outcome.wrong = float(vector @ recorder.expected[(index, kind)]) < 0.99999
    except Exception as exc:  # noqa: BLE001 - every failure is recorded as lost
        outcome = Outcome(sent - t0, time.perf_counter() - sent, type(exc).__name__)
    recorder.outcomes.append(outcome)


async def triton_request(client, pool, index, kind, recorder, t0) -> None:
    import tritonclient.grpc.aio as grpc_aio

    sent = time.perf_counter()
    text = grpc_aio.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[pool[index].encode()]], dtype=object))
    kinds = grpc_aio.InferInput("KIND", [1, 1], "BYTES")
    kinds.set_data_from_numpy(np.array([[kind.encode()]], dtype=object))
    try:
        result = await client.infer(MODEL, [text, kinds], client_timeout=60)
        vector = result.as_numpy("EMBEDDING")[0]
        recorder.outcomes.append(Outcome(sent - t0, time.perf_counter() - sent, 200,
                                         wrong=float(vector @ recorder.expected[(index, kind)]) < 0.99999))
    except Exception as exc:  # noqa: BLE001
        recorder.outcomes.append(Outcome(sent - t0, time.perf_counter() - sent, type(exc).__name__))


# -- load shapes ------------------------------------------------------------------------------------

async def closed_loop(send, clients: int, seconds: float, n_texts: int) -> float:
    """`clients` workers back to back for `seconds`; returns the phase start."""
    t0 = time.perf_counter()
    rng = random.Random(1)

    async def worker():
        while time.perf_counter() - t0 < seconds:
            await send(rng.randrange(n_texts), rng.choice(KINDS), t0)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return t0


async def open_loop(send, rate: float, seconds: float, n_texts: int, during=None) -> None:
    """Poisson arrivals at `rate`/s for `seconds`, each request its own task (none waits for
    another); `during(t0)` runs alongside (fault injection, sampling)."""
    t0 = time.perf_counter()
    rng = random.Random(2)
    tasks, next_at = [], 0.0
    side = asyncio.create_task(during(t0)) if during else None
    while next_at < seconds:
        delay = t0 + next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(rng.randrange(n_texts), rng.choice(KINDS), t0)))
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    if side:
        await side


# -- the run --------------------------------------------------------------------------------------

class Stack:
    """Triton + gateway on free loopback ports."""

    def __init__(self, repo: Path, work: Path, max_queue: int):
        self.repo, self.work = repo, work
        self.ports = free_ports(4)
        self.triton = TritonServer(repo, *self.ports[:3], log_path=work / "triton.log")
        self.gateway = GatewayServer(self.triton.grpc_url, MODEL, port=self.ports[3], log_path=work / "gateway.log",
                                     extra_args=["--max-queue", str(max_queue), "--timeout", "15"])
        self.gateway_url = self.gateway.base_url

    def start(self) -> None:
        self.triton.start(timeout=300)
        self.gateway.start(timeout=60)

    def gateway_alive(self) -> bool:
        return self.gateway.process is not None and self.gateway.process.poll() is None

    def rss(self) -> dict:
        return {"gateway_mb": round(rss_mb([self.gateway.process.pid]), 1),
                "triton_mb": round(rss_mb(group_members(self.triton.process.pid)), 1)}

    def stop(self) -> None:
        self.gateway.stop()
        self.triton.stop()


async def expected_vectors(grpc_url: str, pool: list[str]) -> dict:
    import tritonclient.grpc.aio as grpc_aio

    client = grpc_aio.InferenceServerClient(grpc_url)
    expected = {}
    for kind in KINDS:
        for start in range(0, len(pool), 8):
            chunk = pool[start:start + 8]
            text = grpc_aio.InferInput("TEXT", [len(chunk), 1], "BYTES")
            text.set_data_from_numpy(np.array([[t.encode()] for t in chunk], dtype=object))
            kinds = grpc_aio.InferInput("KIND", [len(chunk), 1], "BYTES")
            kinds.set_data_from_numpy(np.array([[kind.encode()]] * len(chunk), dtype=object))
            vectors = (await client.infer(MODEL, [text, kinds])).as_numpy("EMBEDDING")
            for offset, vector in enumerate(vectors):
                expected[(start + offset, kind)] = vector / np.linalg.norm(vector)
    await client.close()
    return expected


async def run(args, stack: Stack, pool: list[str]) -> dict:
    import aiohttp
    import tritonclient.grpc.aio as grpc_aio

    expected = await expected_vectors(stack.triton.grpc_url, pool)
    results: dict = {"saturation": {}, "faults": {}}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        def via_gateway(recorder):
            return lambda i, kind, t0: gateway_request(session, stack.gateway_url, pool, i, kind, recorder, t0)

        # 1. saturation, gateway and Triton direct in the same run (alternating, best of each)
        client = grpc_aio.InferenceServerClient(stack.triton.grpc_url)
        log("warm-up: 5 s each way")
        await closed_loop(via_gateway(Recorder(expected)), 4, 5, len(pool))
        warm = Recorder(expected)
        await closed_loop(lambda i, kind, t0: triton_request(client, pool, i, kind, warm, t0), 4, 5, len(pool))
        for clients in args.clients:
            for target in ("triton-grpc", "gateway"):
                recorder = Recorder(expected)
                send = via_gateway(recorder) if target == "gateway" else (
                    lambda i, kind, t0, r=recorder: triton_request(client, pool, i, kind, r, t0))
                log(f"saturation: {target}, {clients} clients, {args.saturation_seconds} s")
                await closed_loop(send, clients, args.saturation_seconds, len(pool))
                summary = recorder.summary()
                summary["rps"] = round(summary["ok"] / args.saturation_seconds, 2)
                results["saturation"][f"{target}@{clients}"] = summary
                log(f"  {summary['rps']} req/s, p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms")
        await client.close()
        best = {t: max(v["rps"] for k, v in results["saturation"].items() if k.startswith(t))
                for t in ("gateway", "triton-grpc")}
        saturation = best["gateway"]
        results["saturation_rps"] = best
        results["gateway_overhead_pct"] = round(100 * (1 - best["gateway"] / best["triton-grpc"]), 1)
        rate = args.load * saturation
        log(f"saturation {saturation} req/s (Triton direct {best['triton-grpc']}); soak at {rate:.1f} req/s")

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
            "first_ok_after_ready_s": _first_ok_after(restart.outcomes, times["ready"]),
        }
        log(f"  {json.dumps(results['faults']['triton_restart'])}")

        # 3b. clients that disconnect mid-request, then the gateway must still serve
        disconnects = Recorder(expected)
        log("fault: 200 client disconnects mid-request")
        t0 = time.perf_counter()
        await asyncio.gather(*(gateway_request(session, stack.gateway_url, pool, i % len(pool), "query",
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


def _first_ok_after(outcomes, ready: float):
    times = sorted(o.sent + o.latency for o in outcomes if o.status == 200 and o.sent + o.latency >= ready)
    return round(times[0] - ready, 2) if times else None


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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (lat, mem) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        starts = [w["start_s"] for w in soak["windows"]]
        lat.plot(starts, [w["p50_ms"] for w in soak["windows"]], label="p50")
        lat.plot(starts, [w["p99_ms"] for w in soak["windows"]], label="p99")
        lat.set_ylabel("latency ms")
        lat.legend()
        mem.plot([s["t"] for s in soak["rss"]], [s["gateway_mb"] for s in soak["rss"]], label="gateway RSS")
        mem.plot([s["t"] for s in soak["rss"]], [s["triton_mb"] for s in soak["rss"]], label="Triton RSS")
        mem.set_ylabel("MB")
        mem.set_xlabel("seconds")
        mem.legend()
        fig.suptitle(f"gateway soak at {soak['rate_rps']} req/s")
        fig.savefig(out / "soak.png", dpi=100)
    except Exception as exc:  # noqa: BLE001 - the numbers are written already
        log(f"no plot: {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=None, help="fp32 ONNX artifact (default: build the small example)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "soak")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--clients", default="8,16", help="closed-loop clients for saturation")
    parser.add_argument("--saturation-seconds", type=float, default=20)
    parser.add_argument("--soak-seconds", type=int, default=600)
    parser.add_argument("--window", type=int, default=30, help="seconds per p50/p99 window")
    parser.add_argument("--load", type=float, default=0.8, help="soak rate as a fraction of saturation")
    parser.add_argument("--fault-seconds", type=float, default=60)
    parser.add_argument("--burst-seconds", type=float, default=20)
    parser.add_argument("--max-queue", type=int, default=256, help="gateway --max-queue (429 beyond)")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    artifact = args.artifact or build_artifact(args.work)
    from moai_export.evaluation.machine import machine_slug
    from moai_export.export.triton import TritonOptions, write_repository

    repo = args.work / "models"
    write_repository(artifact, repo, TritonOptions(max_batch_size=16, verify="none", force=True), log=log)
    stack = Stack(repo, args.work, args.max_queue)
    stack.start()
    try:
        results = asyncio.run(run(args, stack, texts_pool(200)))
    finally:
        stack.stop()
    results.update(machine=machine_slug(), artifact=str(artifact), args={k: v for k, v in vars(args).items()
                                                                          if k not in ("work", "out", "artifact")})
    out = args.out or default_results_dir("gateway-soak")
    write_report(results, out)
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
