"""Replicas and failover, on real processes: three tritonservers on loopback serving one
repository behind one gateway (`--triton ipv4:A,B,C`). Under a bounded load one replica is
killed with SIGKILL and restarted on its port: no request fails, every answer is the expected
vector, the restarted replica gets traffic again (its own Triton metrics say so) and the
gateway's /metrics counts the retries. Then `verify URL --expected DIR` passes on this
deployment and fails (exit 3) on a server of the base model's repository."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import test_gateway
from click.testing import CliRunner
from test_gateway import KEYS, MODEL, call, start_gateway

from moai_export.benchmark.gateway_bench import gateway_retries, triton_successes
from moai_export.commands.base import EXIT_VERIFICATION_FAILED
from moai_export.commands.export_cli import main
from moai_export.gates.parity import cosine_rows
from moai_export.launchers.triton_server import TritonServer, free_ports, runtime_venv

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not list(runtime_venv().glob("lib/python3*/site-packages/pytriton/tritonserver")),
    reason="Triton runtime environment missing: run serve/triton/setup_env.sh (make test does)",
)

REPLICAS = 3
LOAD_THREADS = 4
TEXTS = [("query", "BC카드 연회비는 어떻게 되나요?"), ("document", "해외 결제 수수료는 결제 금액의 1%입니다. " * 12),
         ("query", "리볼빙 이자율"), ("document", "카드 분실 신고는 24시간 가능합니다. " * 20)]
repo = test_gateway.repo  # the fp32 repository every replica serves (module scope here too)


@pytest.fixture(scope="module")
def replicas(repo, tmp_path_factory):
    logs = tmp_path_factory.mktemp("replicas")
    ports = free_ports(3 * REPLICAS)
    servers = [TritonServer(repo, *ports[3 * i:3 * i + 3], log_path=logs / f"triton{i}.log") for i in range(REPLICAS)]
    try:
        for server in servers:
            server.start(timeout=180)
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def gateway(replicas, tmp_path_factory):
    target = "ipv4:" + ",".join(server.grpc_url for server in replicas)
    url, process = start_gateway(None, tmp_path_factory.mktemp("gw") / "gateway.log", "--triton", target,
                                 "--model", MODEL, "--timeout", "10")
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def served_count(server: TritonServer) -> float:
    """Successful inferences of the ensemble, by the replica's own Triton metrics."""
    return triton_successes(server, MODEL)


def embed(url: str, kind: str, text: str) -> tuple[int, np.ndarray | None]:
    status, _, body = call(url, "POST", "/v1/embeddings", {"model": MODEL, "input": [text], "input_type": kind})
    return status, np.asarray(body["data"][0]["embedding"], dtype=np.float32) if status == 200 else None


class Load:
    """LOAD_THREADS clients sending TEXTS round and round until stopped; every answer is checked
    against the expected vector of its text."""

    def __init__(self, url: str, expected: list[np.ndarray]):
        self.url, self.expected = url, expected
        self.requests, self.failed, self.wrong = 0, [], []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(LOAD_THREADS)]

    def _client(self, seed: int) -> None:
        i = seed
        while not self._stop.is_set():
            kind, text = TEXTS[i % len(TEXTS)]
            try:
                status, vector = embed(self.url, kind, text)
            except OSError as exc:
                status, vector = repr(exc), None
            with self._lock:
                self.requests += 1
                if vector is None:
                    self.failed.append(status)
                elif cosine_rows(vector[None], self.expected[i % len(TEXTS)][None])[0] < 0.99999:
                    self.wrong.append(i % len(TEXTS))
            i += 1

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def test_a_killed_replica_loses_no_request_and_gets_traffic_again_after_its_restart(gateway, replicas, onnx_fp32_dir):
    from moai_export.embedders import load_embedder

    with load_embedder(f"onnx:{onnx_fp32_dir}") as artifact:  # the vectors every replica must answer
        expected = [artifact.encode([text], kind)[0] for kind, text in TEXTS]
    victim = replicas[0]
    with Load(gateway, expected) as load:
        time.sleep(4)
        assert all(served_count(server) > 0 for server in replicas), "round_robin spreads the load"
        # frozen first, so that requests are surely in flight on it when it dies (the tiny model
        # answers in milliseconds): a node that hangs, then goes
        os.killpg(victim.process.pid, signal.SIGSTOP)
        time.sleep(1)
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        time.sleep(3)  # the survivors carry the load
        victim.restart(timeout=180)  # on its own ports, as a pod comes back behind its Service
        restarted = served_count(victim)
        time.sleep(6)
        after_restart = served_count(victim)
    assert load.requests > 50
    assert load.failed == [] and load.wrong == [], (load.failed[:5], load.wrong[:5])
    assert after_restart > restarted, f"the restarted replica served nothing ({restarted} -> {after_restart})"
    retries = gateway_retries(gateway)
    assert retries > 0, "the requests in flight on the killed replica were retried"


def test_verify_expected_passes_on_the_deployment_and_fails_on_the_base_model(gateway, repo, example_dir, tmp_path,
                                                                               monkeypatch):
    from moai_export.export.onnx import OnnxOptions, export_onnx
    from moai_export.export.triton import TritonOptions, write_repository

    monkeypatch.setenv("MOAI_GATEWAY_API_KEY", KEYS[0])
    right = CliRunner().invoke(main, ["verify", f"openai-http://{gateway.removeprefix('http://')}/{MODEL}",
                                      "--expected", str(repo), "--json", str(tmp_path / "right.json")])
    assert right.exit_code == 0, right.output

    # a stale deployment: the base model, without the adapter, in a repository of its own
    base_onnx = tmp_path / "base-onnx"
    export_onnx(example_dir / "base", base_onnx, options=OnnxOptions(log=lambda m: None, allow_unverified=True))
    wrong_repo = tmp_path / "wrong"
    write_repository(base_onnx, wrong_repo, TritonOptions(max_batch_size=8, verify="none", allow_unverified=True),
                     log=lambda m: None)
    server = TritonServer(wrong_repo, *free_ports(3), log_path=tmp_path / "wrong.log").start(timeout=180)
    try:
        wrong = CliRunner().invoke(main, ["verify", f"triton-grpc://{server.grpc_url}/{MODEL}",
                                          "--expected", str(repo), "--json", str(tmp_path / "wrong.json")])
    finally:
        server.stop()
    assert wrong.exit_code == EXIT_VERIFICATION_FAILED, wrong.output
    assert "worst probes:" in wrong.output and "FAIL" in wrong.output
