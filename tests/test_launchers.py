"""The shell launchers (serve/triton/run_local.sh, serve/vllm/run.sh) against the REAL servers:
a launcher owns everything it started. SIGTERM / SIGHUP stop the server (exit 143 / 129), the
ports are free within the grace period, no process of the server's group is left, the work
directory and Triton's /dev/shm regions are gone; a launcher killed with SIGKILL leaves a server
behind that the next launch removes (and says so); a dead vLLM API server takes its EngineCore
with it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from moai_export.launchers.process import STATE_FILE, group_members
from moai_export.launchers.triton_server import SHM_DIR, free_ports, runtime_venv
from moai_export.launchers.vllm_server import vllm_venv

ROOT = Path(__file__).resolve().parents[1]
GRACE = 30.0  # the launchers' stop grace (20 s) plus the leftover sweep


def have(runtime: bool) -> bool:
    return bool(os.environ.get("CI")) or runtime


needs_triton = pytest.mark.skipif(
    not have(bool(list(runtime_venv().glob("lib/python3*/site-packages/pytriton/tritonserver")))),
    reason="Triton runtime environment missing: run serve/triton/setup_env.sh (make test does)")
needs_vllm = pytest.mark.skipif(not have((vllm_venv() / "bin" / "python").is_file()),
                                reason="vLLM runtime environment missing: run serve/vllm/setup_env.sh")


class Launcher:
    """One shell launcher in its own session, as `setsid serve/...` would start it."""

    def __init__(self, script: str, args: list[str], tmp_path: Path):
        self.stderr_path = tmp_path / f"launcher-{time.monotonic_ns()}.err"
        self.process = subprocess.Popen([str(ROOT / script), *args], stdout=subprocess.PIPE,
                                        stderr=open(self.stderr_path, "wb"), text=True,
                                        env={**os.environ, "MOAI_PYTHON": sys.executable}, start_new_session=True)

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        line = ""
        while "ready" not in line:
            assert time.monotonic() < deadline and self.process.poll() is None, self.stderr
            line = self.process.stdout.readline()
        return line

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def state(self) -> tuple[Path, dict]:
        """The launch's work directory and launcher.json."""
        for workdir in Path(tempfile.gettempdir()).glob("moai-*"):
            path = workdir / STATE_FILE
            if path.is_file() and json.loads(path.read_text())["launcher_pid"] == self.process.pid:
                return workdir, json.loads(path.read_text())
        raise AssertionError(f"no work directory of launcher {self.process.pid}")

    def stop_now(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(GRACE)


def port_free(port: int) -> bool:
    """Bindable as a server binds (SO_REUSEADDR: a connection in TIME_WAIT does not block it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def assert_all_gone(ports: list[int], pgid: int, workdir: Path) -> None:
    assert wait_until(lambda: all(port_free(p) for p in ports), GRACE), f"ports still taken: {ports}"
    assert group_members(pgid) == [], "a process of the server's group is left"
    assert not workdir.exists()
    assert not list(SHM_DIR.glob(f"{workdir.name}*"))


# -- Triton -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def triton_repo(onnx_fp32_dir, tmp_path_factory):
    from moai_export.export.triton import TritonOptions, write_repository

    repo = tmp_path_factory.mktemp("launch") / "models"
    write_repository(onnx_fp32_dir, repo, TritonOptions(max_batch_size=4, verify="none"), log=lambda m: None)
    return repo


def start_triton(repo: Path, ports: list[int], tmp_path: Path, *extra: str) -> Launcher:
    http, grpc, metrics = ports
    return Launcher("serve/triton/run_local.sh", [str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
                                                  "--metrics-port", str(metrics), *extra], tmp_path)


@needs_triton
def test_triton_launcher_keeps_refusing_an_unadmitted_repository(triton_repo, tmp_path):
    launcher = start_triton(triton_repo, free_ports(3), tmp_path)
    assert launcher.process.wait(60) == 1
    assert "error:" in launcher.stderr and "--allow-unverified" in launcher.stderr


@needs_triton
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_triton_launcher_stops_the_server_on_a_signal(triton_repo, tmp_path, sig, code):
    ports = free_ports(3)
    launcher = start_triton(triton_repo, ports, tmp_path, "--allow-unverified")
    try:
        launcher.wait_ready(180)
        workdir, state = launcher.state()
        assert list(SHM_DIR.glob(f"{workdir.name}-shm-*")), "python backend regions carry the launch's prefix"
        os.kill(launcher.process.pid, sig)
        assert launcher.process.wait(GRACE) == code
        assert_all_gone(ports, state["server_pgid"], workdir)
    finally:
        launcher.stop_now()


@needs_triton
def test_next_triton_launch_removes_what_a_killed_launcher_left(triton_repo, tmp_path):
    ports = free_ports(3)
    first = start_triton(triton_repo, ports, tmp_path, "--allow-unverified")
    try:
        first.wait_ready(180)
        workdir, state = first.state()
        os.kill(first.process.pid, signal.SIGKILL)  # the launcher dies, its server does not
        first.process.wait(10)
        assert group_members(state["server_pgid"]) and workdir.exists()
        second = start_triton(triton_repo, ports, tmp_path, "--allow-unverified")
        try:
            second.wait_ready(180)  # the same ports: the old server is gone
            assert "removed what an earlier launcher" in second.stderr and str(workdir) in second.stderr
            assert group_members(state["server_pgid"]) == [] and not workdir.exists()
            assert not list(SHM_DIR.glob(f"{workdir.name}*"))
        finally:
            second.stop_now()
    finally:
        first.stop_now()


# -- vLLM ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_dir(merged_dir, tmp_path_factory):
    from moai_export.export.vllm import write_vllm_dir
    from moai_export.model_files.model_contract import read_contract

    out = tmp_path_factory.mktemp("launch-vllm") / "vllm"
    out.mkdir()
    write_vllm_dir(merged_dir, out, read_contract(merged_dir), "fp32", "moai-embedding")
    return out


def engine_processes(pgid: int) -> list[str]:
    names = []
    for pid in group_members(pgid):
        try:
            names.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return names


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sigterm", "server dies"])
def test_vllm_launcher_leaves_no_engine_behind(vllm_dir, tmp_path, fault):
    (port,) = free_ports(1)
    launcher = Launcher("serve/vllm/run.sh", [str(vllm_dir), "--port", str(port), "--allow-unverified"], tmp_path)
    try:
        launcher.wait_ready(400)
        workdir, state = launcher.state()
        pgid = state["server_pgid"]
        assert len(group_members(pgid)) >= 2, engine_processes(pgid)  # API server + EngineCore
        if fault == "sigterm":
            os.kill(launcher.process.pid, signal.SIGTERM)
            assert launcher.process.wait(GRACE) == 143
        else:  # the API server process dies; its EngineCore child must not live on
            os.kill(pgid, signal.SIGKILL)
            assert launcher.process.wait(GRACE) not in (0, None)
            assert "exited with code" in launcher.stderr
        assert_all_gone([port], pgid, workdir)
    finally:
        launcher.stop_now()


def test_tritonserver_dir_override(monkeypatch, tmp_path):
    """$MOAI_TRITONSERVER_DIR (the wheel installed with pip --target, as on the GPU machine)
    is used as given, and a folder without the server is named in the error."""
    from moai_export.launchers.triton_server import LaunchError, _pytriton_dir

    monkeypatch.setenv("MOAI_TRITONSERVER_DIR", str(tmp_path))
    with pytest.raises(LaunchError, match=f"MOAI_TRITONSERVER_DIR={tmp_path}: no bin/tritonserver"):
        _pytriton_dir(runtime_venv())
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tritonserver").write_text("")
    assert _pytriton_dir(Path("/nowhere")) == tmp_path


# -- health that tells the truth, and healing ---------------------------------------------------

RECOVERY_S = 30.0  # stated in serve/triton/README.md: kill -> serving right again (measured ~6-8 s here)
PROBE_TEXTS = ["BC카드 연회비는 어떻게 되나요?", "a", "해외 결제 수수료 " * 30]


def http_status(url: str, payload: dict | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")  # Triton's health: no body
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def stub_of(pgid: int, model: str) -> int:
    """The python backend stub that serves `model` in a server's process group."""
    stubs = [pid for pid, line in zip(group_members(pgid), engine_processes(pgid))
             if "triton_python_backend_stub" in line and f"/{model}/" in line]
    assert len(stubs) == 1, engine_processes(pgid)
    return stubs[0]


@needs_triton
def test_a_dead_triton_stub_fails_readiness_and_the_launcher_heals_it(triton_repo, onnx_fp32_dir, tmp_path):
    """kill -9 of the encoder's stub: Triton still says ready, but the gateway's /health/ready and
    the launcher's own probe fail; the launcher reloads the models and every answer after that
    equals the reference (the fp32 ONNX artifact in onnxruntime, within the fp32 gate)."""
    import numpy as np

    from moai_export.embedders import load_embedder
    from moai_export.gates.parity import cosine_rows
    from moai_export.gates.table import gate_for
    from moai_export.launchers.gateway_server import GatewayServer

    ports = free_ports(3)
    (gateway_port,) = free_ports(1)
    reference = load_embedder(f"onnx:{onnx_fp32_dir}")
    min_cosine = gate_for("triton", "fp32").min_cosine
    wrong = answered = 0

    def embed(url: str, kind: str) -> int:
        nonlocal wrong, answered
        status, body = http_status(f"{url}/v1/embeddings", {"model": "moai_embedding", "input": PROBE_TEXTS,
                                                            "input_type": kind})
        if status == 200:
            answered += 1
            served = np.asarray([item["embedding"] for item in body["data"]], dtype=np.float32)
            wrong += int(cosine_rows(served, reference.encode(PROBE_TEXTS, kind)).min() < min_cosine)
        return status

    launcher = start_triton(triton_repo, ports, tmp_path, "--allow-unverified")
    try:
        launcher.wait_ready(180)
        _, state = launcher.state()
        with GatewayServer(f"127.0.0.1:{ports[1]}", "moai_embedding", port=gateway_port,
                           log_path=tmp_path / "gateway.log").start() as gateway:
            url = gateway.base_url
            assert http_status(f"{url}/health/ready")[0] == 200 and embed(url, "query") == 200

            os.kill(stub_of(state["server_pgid"], "moai_embedding_encoder"), signal.SIGKILL)
            killed = time.monotonic()
            # Triton's word at once: ready (asked before the gateway's retries give the watcher time to heal)
            assert http_status(f"http://127.0.0.1:{ports[0]}/v2/health/ready")[0] == 200
            assert embed(url, "document") in (502, 503)  # what the issue saw
            assert http_status(f"{url}/health/ready")[0] == 503, "a 5xx from Triton fails readiness at once"
            assert http_status(f"{url}/health")[0] == 503
            assert http_status(f"{url}/health/live")[0] == 200  # alive: no reason to restart the gateway
            assert wait_until(lambda: "NOT READY: moai_embedding" in launcher.stderr, 10), launcher.stderr[-2000:]

            assert wait_until(lambda: embed(url, "query") == 200 and http_status(f"{url}/health/ready")[0] == 200,
                              RECOVERY_S), f"not healed within {RECOVERY_S} s: {launcher.stderr[-3000:]}"
            recovery = time.monotonic() - killed
            print(f"recovered {recovery:.1f} s after the kill")
            assert "healed:" in launcher.stderr
            statuses = [embed(url, kind) for _ in range(10) for kind in ("query", "document")]
            assert statuses == [200] * 20
            assert launcher.process.poll() is None
    finally:
        launcher.stop_now()
    assert wrong == 0, f"{wrong} of {answered} answers differ from the reference"
