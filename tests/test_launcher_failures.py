"""Launchers that fail say so, and clean up, without any runtime installed: a script stands in
for tritonserver / vLLM's Python (what the real servers do is in test_launchers.py).

  - ready means THIS server: ports held by another server are refused before it starts, and a
    health check answered from a port another process holds is not readiness;
  - vLLM's ZeroMQ sockets and `vllm_dist_*` files stay inside the launch's work directory;
  - the gateway's "port taken" is an error (exit 1), not "verification failed" (3)."""

from __future__ import annotations

import http.server
import json
import socket
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from moai_export.commands.base import EXIT_ERROR
from moai_export.commands.export_cli import main
from moai_export.launchers import process, triton_server
from moai_export.launchers.process import LaunchError, free_ports
from moai_export.launchers.triton_server import TritonServer
from moai_export.launchers.vllm_server import VllmServer


class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # every path answers 200, as a ready server's health check does
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def other_server():
    """other_server(port): another HTTP server, ready, on 127.0.0.1:port."""
    servers = []

    def start(port: int):
        server = http.server.HTTPServer(("127.0.0.1", port), _Ready)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake_tritonserver(tmp_path, monkeypatch) -> Path:
    """A tritonserver that fails to bind its ports after a second, as the real one does when
    they are taken (the pytriton layout the launcher expects, pointed at by MOAI_TRITONSERVER_DIR)."""
    server_dir = tmp_path / "tritonserver"
    (server_dir / "bin").mkdir(parents=True)
    (server_dir / "bin" / "tritonserver").write_text("#!/bin/sh\nsleep 1\necho 'failed to bind' >&2\nexit 1\n")
    (server_dir / "bin" / "tritonserver").chmod(0o755)
    stub = server_dir / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    stub.mkdir(parents=True)
    (stub / "triton_python_backend_stub").write_text("")
    (server_dir / "backends" / "python").mkdir(parents=True)
    monkeypatch.setenv("MOAI_TRITONSERVER_DIR", str(server_dir))
    return server_dir


def test_triton_launcher_with_its_ports_taken_does_not_say_ready(fake_tritonserver, other_server, tmp_path, capsys):
    http_port, grpc_port, metrics_port = free_ports(3)
    other_server(http_port)  # another Triton answers /v2/health/ready there
    (tmp_path / "repo").mkdir()
    code = triton_server.main(["--repo", str(tmp_path / "repo"), "--allow-unverified", "--http-port", str(http_port),
                               "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--timeout", "20"])
    out, err = capsys.readouterr()
    assert "ready" not in out and code == 1
    assert f"HTTP port {http_port} on 127.0.0.1 is already in use" in err


def test_a_health_check_answered_by_another_process_is_not_readiness(fake_tritonserver, other_server, tmp_path,
                                                                     monkeypatch):
    """The other server takes the port after the launcher found it free (a race): the 200 it
    answers must not count as this server's readiness."""
    http_port, grpc_port, metrics_port = free_ports(3)
    monkeypatch.setattr(process, "port_taken", lambda host, port: False)
    other_server(http_port)
    server = TritonServer(tmp_path, http_port, grpc_port, metrics_port)
    with pytest.raises(LaunchError, match=f"not the server answering on HTTP port {http_port}"):
        server.start(timeout=20)
    assert server.process.poll() is not None  # stopped, not left running


def test_a_vllm_launch_leaves_nothing_in_the_temporary_directory(tmp_path, monkeypatch):
    """The stand-in for vLLM's Python leaves what vLLM leaves in $TMPDIR at every start: ZeroMQ
    IPC sockets and a vllm_dist_* file."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(
        f"#!{sys.executable}\n"
        "import os, socket, tempfile, time\n"
        "tmp = tempfile.gettempdir()\n"
        "open(os.path.join(tmp, 'vllm_dist_abc'), 'w').close()\n"
        "for i in range(7):\n"
        "    socket.socket(socket.AF_UNIX).bind(os.path.join(tmp, f'ipc-{i}'))\n"
        "time.sleep(60)\n")
    (venv / "bin" / "python").chmod(0o755)
    monkeypatch.setenv("MOAI_VLLM_VENV", str(venv))
    model = tmp_path / "model"
    model.mkdir()
    (model / "vllm_serve.json").write_text(json.dumps({
        "served_model_name": "m", "runner": "pooling", "pooler_config": {}, "dtype_cpu": "float32",
        "dtype_gpu": "bfloat16", "max_model_len": 64, "kv_cache_memory_bytes": 1}))
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(shared_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    server = VllmServer(model, port=free_ports(1)[0], device="cpu")
    with pytest.raises(LaunchError, match="not ready"):
        server.start(timeout=3)
    assert list(shared_tmp.iterdir()) == []


def test_gateway_port_taken_exits_1_not_3():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["gateway", "--triton", "grpc://127.0.0.1:1", "--model", "m",
                                           "--port", str(port)])
    assert result.exit_code == EXIT_ERROR, result.output
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in result.output


def test_the_watch_probe_keeps_the_admitting_gates_threshold_not_its_measured_figure(tmp_path):
    """An admission records what the gate measured (fp32: min cosine 1.0) beside its thresholds;
    probing at the measured figure would call two answers a rounding apart a failure, and heal
    a healthy server over and over."""
    from moai_export.artifacts.admission import MANIFEST_FILE
    from moai_export.launchers.triton_watch import UNVERIFIED_MIN_COSINE, admitted_min_cosine

    ensemble = tmp_path / "moai_embedding"
    ensemble.mkdir()
    entry = {"runtime": "triton", "device": "cpu", "dtype": "fp32", "provider": "python",
             "gate": {"min_cosine": 1.0, "max_abs": 1e-7, "thresholds": {"min_cosine": 0.99999, "max_abs": 1e-4}}}
    manifest = {"stage": "triton", "options": {"encoder": "python", "precision": "fp32"}, "admitted_for": [entry]}
    (ensemble / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert admitted_min_cosine(ensemble) == 0.99999
    manifest["admitted_for"] = []
    (ensemble / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert admitted_min_cosine(ensemble) == UNVERIFIED_MIN_COSINE
