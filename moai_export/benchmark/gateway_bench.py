"""What the gateway benchmarks (bench/gateway_soak.py, bench/gateway_overhead.py,
bench/cluster_soak.py) share: a Triton (or several replicas) + gateway stack on free loopback
ports, the artifact they serve by default, a pool of texts, requests to the gateway and to Triton
directly, each recorded as an `Outcome` and checked against the vector Triton gives that text
(see benchmark/async_load.py), and the counters a replica test reads from /metrics."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import re
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np

from ..core.input_rules import KINDS
from ..embedders.triton import ensemble_inputs
from ..launchers.gateway_server import GatewayServer
from ..launchers.process import group_members
from ..launchers.triton_server import TritonServer, free_ports
from .async_load import Outcome, Recorder, Send
from .process_memory import rss_mb

TRITON_DIRECT = "triton-grpc"  # the target label of Triton's gRPC endpoint, asked without the gateway


def log(message: str) -> None:
    """Progress on stderr, stamped with the time of day (a soak runs for minutes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_onnx_artifact(work: Path, log: Callable[[str], None] = log, size: str = "small") -> Path:
    """The example of `size` (`small`: 4 layers, hidden 256), merged and exported to fp32 ONNX
    under `work` (each stage skipped when its output is there already)."""
    from ..example import build_example
    from ..export.merge import MergeOptions, merge
    from ..export.onnx import OnnxOptions, export_onnx

    onnx_dir = work / "onnx-fp32"
    if (onnx_dir / "model.onnx").is_file():
        return onnx_dir
    example = work / "example"
    if not (example / "adapter").is_dir():
        build_example(example, size=size, seed=0, steps=8, force=True, progress=False)
    merged = work / "merged"
    if not (merged / "config.json").is_file():
        merge(str(example / "base"), str(example / "adapter"), merged, MergeOptions(log=log))
    export_onnx(merged, onnx_dir, options=OnnxOptions(log=log))
    return onnx_dir


def texts_pool(n: int, seed: int = 0) -> list[str]:
    """Short Korean / English retrieval texts of varied length, each numbered (so no two are alike)."""
    words = ("카드 연회비 해외 결제 수수료 포인트 적립 한도 상향 분실 신고 재발급 자동이체 할부 이자 "
             "card annual fee foreign payment points limit lost report reissue installment interest statement").split()
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(4, 40))) for i in range(n)]


class ServingStack:
    """Triton serving `repo` and the gateway in front of it, on free loopback ports; with
    `replicas` > 1, that many tritonservers on the one repository, which the gateway balances
    over as one gRPC target (`ipv4:A,B,...`). `triton` is the first replica."""

    def __init__(self, repo: Path, work: Path, model: str, max_queue: int | None, replicas: int = 1):
        self.repo, self.work = repo, work
        ports = free_ports(3 * replicas + 1)
        self.tritons = [TritonServer(repo, *ports[3 * i:3 * i + 3],
                                     log_path=work / ("triton.log" if replicas == 1 else f"triton{i}.log"))
                        for i in range(replicas)]
        self.triton = self.tritons[0]
        target = self.triton.grpc_url if replicas == 1 else "ipv4:" + ",".join(t.grpc_url for t in self.tritons)
        self.gateway = GatewayServer(target, model, port=ports[-1], log_path=work / "gateway.log",
                                     extra_args=(["--max-queue", str(max_queue)] if max_queue is not None else [])
                                     + ["--timeout", "15"])
        self.gateway_url = self.gateway.base_url

    def start(self) -> None:
        for triton in self.tritons:
            triton.start(timeout=300)
        self.gateway.start(timeout=60)

    def gateway_alive(self) -> bool:
        return self.gateway.process is not None and self.gateway.process.poll() is None

    def rss(self) -> dict:
        """Resident MiB of the gateway and of Triton's whole process groups (backend stubs too), all
        replicas together; with several, each replica's too (a killed one counts 0)."""
        each = [round(rss_mb(group_members(triton.process.pid)), 1) for triton in self.tritons]
        memory = {"gateway_mb": round(rss_mb([self.gateway.process.pid]), 1), "triton_mb": round(sum(each), 1)}
        if len(each) > 1:
            memory["triton_mb_each"] = each
        return memory

    def stop(self) -> None:
        self.gateway.stop()
        for triton in self.tritons:
            triton.stop()


def metric_total(url: str, pattern: re.Pattern) -> float:
    """The sum of the samples `pattern` (one group: the value) matches on the Prometheus page at
    `url`; 0 when the server does not answer (a replica that is down)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            page = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(value) for value in pattern.findall(page))


def triton_successes(triton: TritonServer, model: str) -> float:
    """Successful inferences of `model` by this replica, from its own Triton metrics (they start
    from 0 when it restarts)."""
    pattern = re.compile(r'^nv_inference_request_success\{model="%s",version="1"\}\s+([0-9.eE+-]+)' % re.escape(model),
                         re.MULTILINE)
    return metric_total(f"http://127.0.0.1:{triton.metrics_port}/metrics", pattern)


GATEWAY_RETRIES = re.compile(r'^moai_gateway_upstream_retries_total\{reason="[a-z_]+"\}\s+([0-9.eE+-]+)', re.MULTILINE)


def gateway_retries(gateway_url: str) -> float:
    """Upstream calls the gateway tried again on another replica, all reasons together."""
    return metric_total(f"{gateway_url}/metrics", GATEWAY_RETRIES)


async def expected_vectors(grpc_url: str, model: str, pool: list[str]) -> dict:
    """(text index, kind) -> the unit vector Triton gives that text: what every answer is checked against."""
    import tritonclient.grpc.aio as grpc_aio

    client = grpc_aio.InferenceServerClient(grpc_url)
    expected = {}
    for kind in KINDS:
        for start in range(0, len(pool), 8):
            chunk = pool[start:start + 8]
            vectors = (await client.infer(model, ensemble_inputs(grpc_aio, chunk, kind))).as_numpy("EMBEDDING")
            for offset, vector in enumerate(vectors):
                expected[(start + offset, kind)] = vector / np.linalg.norm(vector)
    await client.close()
    return expected


async def gateway_request(session, url: str, model: str, pool: list[str], index: int, kind: str,
                          recorder: Recorder, t0: float, timeout: float = 60.0) -> None:
    """One text through the gateway's /v1/embeddings (base64 vectors), on an aiohttp session."""
    import aiohttp

    sent = time.perf_counter()
    payload = {"model": model, "input": [pool[index]], "input_type": kind, "encoding_format": "base64"}
    try:
        async with session.post(f"{url}/v1/embeddings", json=payload,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            body = await response.read()
            outcome = Outcome(sent - t0, time.perf_counter() - sent, response.status,
                              retry_after="Retry-After" in response.headers)
            if response.status == 200:
                vector = np.frombuffer(base64.b64decode(json.loads(body)["data"][0]["embedding"]), dtype="<f4")
                outcome.wrong = recorder.is_wrong(index, kind, vector)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded as lost
        outcome = Outcome(sent - t0, time.perf_counter() - sent, type(exc).__name__)
    recorder.outcomes.append(outcome)


async def triton_request(client, model: str, pool: list[str], index: int, kind: str, recorder: Recorder,
                         t0: float) -> None:
    """One text to the Triton ensemble directly; `client` is a tritonclient.grpc.aio client."""
    import tritonclient.grpc.aio as grpc_aio

    sent = time.perf_counter()
    try:
        result = await client.infer(model, ensemble_inputs(grpc_aio, [pool[index]], kind), client_timeout=60)
        vector = result.as_numpy("EMBEDDING")[0]
        recorder.outcomes.append(Outcome(sent - t0, time.perf_counter() - sent, 200,
                                         wrong=recorder.is_wrong(index, kind, vector)))
    except Exception as exc:  # noqa: BLE001
        recorder.outcomes.append(Outcome(sent - t0, time.perf_counter() - sent, type(exc).__name__))


@dataclass
class Senders:
    """`send` coroutines for the load generators, per target: TRITON_DIRECT or a gateway's label."""

    model: str
    pool: list[str]
    session: object  # aiohttp.ClientSession
    triton: object  # tritonclient.grpc.aio.InferenceServerClient
    gateways: dict[str, str]  # label -> base URL

    def __call__(self, target: str, recorder: Recorder) -> Send:
        if target == TRITON_DIRECT:
            return lambda i, kind, t0: triton_request(self.triton, self.model, self.pool, i, kind, recorder, t0)
        url = self.gateways[target]
        return lambda i, kind, t0: gateway_request(self.session, url, self.model, self.pool, i, kind, recorder, t0)


def client_counts(text: str) -> list[int]:
    """--clients 8,16 (an argparse type): the closed-loop client counts saturation is measured at."""
    return [int(count) for count in text.split(",")]


def run_on_stack(args: argparse.Namespace, run: Callable[..., Awaitable[dict]], *, size: str,
                 replicas: int = 1) -> dict:
    """Serve `args.artifact` (or the example of `size`, built under `args.work`) from a Triton
    repository on `replicas` tritonservers behind the gateway, await `run(args, stack, texts)` and
    return its results with the machine, the artifact and the settings; the servers are stopped
    whatever happens."""
    from ..evaluation.machine import machine_slug
    from ..export.triton import TritonOptions, write_repository

    args.work.mkdir(parents=True, exist_ok=True)
    artifact = args.artifact or build_onnx_artifact(args.work, log, size=size)
    repo = args.work / "models"
    write_repository(artifact, repo, TritonOptions(max_batch_size=16, verify="none", force=True), log=log)
    stack = ServingStack(repo, args.work, TritonOptions.name, args.max_queue, replicas=replicas)
    stack.start()
    try:
        results = asyncio.run(run(args, stack, texts_pool(200)))
    finally:
        stack.stop()
    results.update(machine=machine_slug(), artifact=str(artifact), args={k: v for k, v in vars(args).items()
                                                                          if k not in ("work", "out", "artifact")})
    return results


def plot_soak(path: Path, title: str, windows: list[dict], samples: list[dict], memory: dict[str, Callable],
              marks: list[float] = ()) -> None:
    """p50/p99 per window (`marks`: vertical lines, e.g. faults) above RSS over time, one line per
    `memory` label (its value read from each sample); nothing but a log line without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (lat, mem) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        starts = [w["start_s"] for w in windows]
        lat.plot(starts, [w["p50_ms"] for w in windows], label="p50")
        lat.plot(starts, [w["p99_ms"] for w in windows], label="p99")
        for mark in marks:
            lat.axvline(mark, color="red", linestyle=":", linewidth=1)
        lat.set_ylabel("latency ms")
        lat.legend()
        for label, value in memory.items():
            mem.plot([s["t"] for s in samples], [value(s) for s in samples], label=label)
        mem.set_ylabel("MB")
        mem.set_xlabel("seconds")
        mem.legend()
        fig.suptitle(title)
        fig.savefig(path, dpi=100)
    except Exception as exc:  # noqa: BLE001 - the numbers are written already
        log(f"no plot: {exc}")
