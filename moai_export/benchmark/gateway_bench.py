"""What the gateway benchmarks (bench/gateway_soak.py, bench/gateway_overhead.py) share: a
Triton + gateway stack on free loopback ports, the artifact they serve by default, a pool of
texts, and requests to the gateway and to Triton directly, each recorded as an `Outcome` and
checked against the vector Triton gives that text (see benchmark/async_load.py)."""

from __future__ import annotations

import base64
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


def build_onnx_artifact(work: Path, log: Callable[[str], None] = log) -> Path:
    """The `small` example (4 layers, hidden 256), merged and exported to fp32 ONNX under `work`
    (each stage skipped when its output is there already)."""
    from ..example import build_example
    from ..export.merge import MergeOptions, merge
    from ..export.onnx import OnnxOptions, export_onnx

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
    """Short Korean / English retrieval texts of varied length, each numbered (so no two are alike)."""
    words = ("카드 연회비 해외 결제 수수료 포인트 적립 한도 상향 분실 신고 재발급 자동이체 할부 이자 "
             "card annual fee foreign payment points limit lost report reissue installment interest statement").split()
    rng = random.Random(seed)
    return [f"{i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(4, 40))) for i in range(n)]


class ServingStack:
    """Triton serving `repo` and the gateway in front of it, on free loopback ports."""

    def __init__(self, repo: Path, work: Path, model: str, max_queue: int):
        self.repo, self.work = repo, work
        self.ports = free_ports(4)
        self.triton = TritonServer(repo, *self.ports[:3], log_path=work / "triton.log")
        self.gateway = GatewayServer(self.triton.grpc_url, model, port=self.ports[3], log_path=work / "gateway.log",
                                     extra_args=["--max-queue", str(max_queue), "--timeout", "15"])
        self.gateway_url = self.gateway.base_url

    def start(self) -> None:
        self.triton.start(timeout=300)
        self.gateway.start(timeout=60)

    def gateway_alive(self) -> bool:
        return self.gateway.process is not None and self.gateway.process.poll() is None

    def rss(self) -> dict:
        """Resident MiB of the gateway and of Triton's whole process group (its backend stubs too)."""
        return {"gateway_mb": round(rss_mb([self.gateway.process.pid]), 1),
                "triton_mb": round(rss_mb(group_members(self.triton.process.pid)), 1)}

    def stop(self) -> None:
        self.gateway.stop()
        self.triton.stop()


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
