"""Start a real tritonserver on this machine, from the nvidia-pytriton wheel.

The wheel bundles tritonserver 2.51 with the python backend only. It is installed in its
own environment (serve/triton/setup_env.sh; numpy<2), and this launcher, which needs only
the standard library, lays out what the server expects:
  - a backends directory with the python backend and the Python 3.11 stub next to it;
  - LD_LIBRARY_PATH = Python's shared library dir, then the wheel's bundled libraries;
  - the runtime environment's bin first on PATH (the stub's Python finds its packages there);
  - HTTP / gRPC / metrics bound to 127.0.0.1.
If the stub cannot start, tritonserver waits in "loading" forever: readiness has a deadline,
and a server that misses it is killed.

    python -m moai_export.serving.triton_server --repo triton_models [--http-port 8000 ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


class TritonLaunchError(RuntimeError):
    pass


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (for servers that must not collide with others)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def runtime_venv() -> Path:
    root = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("MOAI_TRITON_VENV", root / ".venv-triton"))


def _pytriton_dir(venv: Path) -> Path:
    candidates = sorted(venv.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    if not candidates:
        raise TritonLaunchError(
            f"no tritonserver in {venv}; create the runtime environment with serve/triton/setup_env.sh"
        )
    return candidates[0]


@dataclass
class TritonServer:
    repository: Path
    http_port: int = DEFAULT_PORTS["http"]
    grpc_port: int = DEFAULT_PORTS["grpc"]
    metrics_port: int = DEFAULT_PORTS["metrics"]
    venv: Path = field(default_factory=runtime_venv)
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    _workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        server_dir = _pytriton_dir(self.venv)
        python_tag = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server_dir / "python_backend_stubs" / python_tag / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonLaunchError(f"no python backend stub for Python {python_tag} in {server_dir}")
        self._workdir = Path(tempfile.mkdtemp(prefix="moai-triton-"))
        backends = self._workdir / "backends"
        shutil.copytree(server_dir / "backends", backends)
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
        libs = [sysconfig.get_config_var("LIBDIR"), str(server_dir.parents[1] / "nvidia_pytriton.libs")]
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        env.pop("PYTHONHOME", None)
        command = [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={Path(self.repository).resolve()}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=5",  # do not wait 30 s for idle keep-alive clients on shutdown
            *self.extra_args,
        ]
        return command, env

    def start(self, timeout: float = 120.0) -> "TritonServer":
        command, env = self.command()
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonLaunchError(f"tritonserver exited with code {self.process.returncode}{self._log_hint()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TritonLaunchError(f"tritonserver not ready after {timeout:.0f} s (killed){self._log_hint()}")

    def _log_hint(self) -> str:
        return f"; see {self.log_path}" if self.log_path else ""

    def stop(self, grace: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local tritonserver (CPU) on 127.0.0.1 for a model repository.")
    parser.add_argument("--repo", required=True, type=Path, help="Model repository (written by `moai-export triton`).")
    parser.add_argument("--http-port", type=int, default=DEFAULT_PORTS["http"])
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_PORTS["grpc"])
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_PORTS["metrics"])
    parser.add_argument("--timeout", type=float, default=180.0, help="Seconds to wait for readiness before giving up.")
    args, extra = parser.parse_known_args(argv)
    server = TritonServer(args.repo, args.http_port, args.grpc_port, args.metrics_port, extra_args=extra,
                          log_path=None)
    command, env = server.command()
    # Foreground: the server's own log goes to the terminal; a watchdog enforces the deadline.
    process = subprocess.Popen(command, env=env, start_new_session=True)
    server.process = process
    try:
        server.wait_ready(args.timeout)
        print(f"tritonserver ready: HTTP http://127.0.0.1:{args.http_port}  gRPC 127.0.0.1:{args.grpc_port}  "
              f"metrics http://127.0.0.1:{args.metrics_port}/metrics", flush=True)
        return process.wait()
    except TritonLaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
