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
Once ready, the launcher watches each ensemble with a real embedding and heals it
(triton_watch): Triton's own readiness stays 200 when a python backend stub dies.

    python -m moai_export.launchers.triton_server --repo triton_models [--http-port 8000 ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from .process import LaunchError, ManagedServer, free_ports

__all__ = ["TritonServer", "LaunchError", "free_ports", "runtime_venv"]

DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


def runtime_venv() -> Path:
    root = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("MOAI_TRITON_VENV", root / ".venv-triton"))


def _pytriton_dir(venv: Path) -> Path:
    """The wheel's tritonserver folder: $MOAI_TRITONSERVER_DIR when set (the wheel installed
    elsewhere, e.g. `pip install --target` on a GPU machine), else in the runtime environment."""
    if os.environ.get("MOAI_TRITONSERVER_DIR"):
        server_dir = Path(os.environ["MOAI_TRITONSERVER_DIR"])
        if not (server_dir / "bin" / "tritonserver").is_file():
            raise LaunchError(f"MOAI_TRITONSERVER_DIR={server_dir}: no bin/tritonserver there")
        return server_dir
    candidates = sorted(venv.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    if not candidates:
        raise LaunchError(
            f"no tritonserver in {venv}; create the runtime environment with serve/triton/setup_env.sh"
        )
    return candidates[0]


@dataclass
class TritonServer(ManagedServer):
    repository: Path
    http_port: int = DEFAULT_PORTS["http"]
    grpc_port: int = DEFAULT_PORTS["grpc"]
    metrics_port: int = DEFAULT_PORTS["metrics"]
    venv: Path = field(default_factory=runtime_venv)
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    process: object = None
    _workdir: Path | None = None
    watched: list[str] = field(default_factory=list)  # ensembles the foreground launcher probes and heals
    label = "tritonserver"
    workdir_prefix = "moai-triton-"

    @property
    def health_url(self) -> str:
        return f"http://{self.http_url}/v2/health/ready"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def listen_ports(self) -> dict[str, int]:
        return {"HTTP": self.http_port, "gRPC": self.grpc_port, "metrics": self.metrics_port}

    def command(self) -> tuple[list[str], dict[str, str]]:
        server_dir = _pytriton_dir(self.venv)
        python_tag = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server_dir / "python_backend_stubs" / python_tag / "triton_python_backend_stub"
        if not stub.is_file():
            raise LaunchError(f"no python backend stub for Python {python_tag} in {server_dir}")
        backends = self.workdir / "backends"
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
            # python-backend shared memory named after this launch: removable if the server is killed
            f"--backend-config=python,shm-region-prefix-name={shm_prefix(self.workdir)}",
            *self.extra_args,
        ]
        return command, env

    def start(self, timeout: float = 120.0) -> "TritonServer":
        return super().start(timeout)

    def watch(self) -> int:
        """Probe each watched ensemble end to end and heal it (triton_watch) until the server exits."""
        if not self.watched:
            return super().watch()
        from .triton_watch import EnsembleProbe, TritonWatch, admitted_min_cosine

        probes = [EnsembleProbe(f"http://{self.http_url}", model, admitted_min_cosine(Path(self.repository) / model))
                  for model in self.watched]
        return TritonWatch(self, probes).run()

    def cleanup_workdir(self, workdir: Path) -> list[str]:
        regions = list(SHM_DIR.glob(f"{shm_prefix(workdir)}*"))
        for region in regions:
            region.unlink(missing_ok=True)
        return [f"{len(regions)} shared-memory regions in {SHM_DIR}"] if regions else []


SHM_DIR = Path("/dev/shm")


def shm_prefix(workdir: Path) -> str:
    return f"{workdir.name}-shm-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local tritonserver (CPU) on 127.0.0.1 for a model repository.")
    parser.add_argument("--repo", required=True, type=Path, help="Model repository (written by `moai-export triton`).")
    parser.add_argument("--http-port", type=int, default=DEFAULT_PORTS["http"])
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_PORTS["grpc"])
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_PORTS["metrics"])
    parser.add_argument("--timeout", type=float, default=180.0, help="Seconds to wait for readiness before giving up.")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="Serve a repository no parity gate admitted (says so loudly).")
    parser.add_argument("--check-only", action="store_true",
                        help="Run the admission check and exit (0: admitted); a container's entrypoint "
                             "runs it before its own tritonserver.")
    args, extra = parser.parse_known_args(argv)
    try:
        from ..artifacts.admission import admission_mode, repository_ensembles
        from ..artifacts.triton_admission import check_repository_admitted

        for model in repository_ensembles(args.repo):
            check_repository_admitted(args.repo, model, mode=admission_mode(allow_unverified=args.allow_unverified))
    except Exception as exc:  # NotAdmitted: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.check_only:
        return 0
    watched = repository_ensembles(args.repo)
    if watched and not any(arg.startswith("--model-control-mode") for arg in extra):
        # the launcher loads the models itself, so that it may reload a broken one (healing)
        extra = ["--model-control-mode=explicit", *(f"--load-model={model}" for model in watched), *extra]
    server = TritonServer(args.repo, args.http_port, args.grpc_port, args.metrics_port, extra_args=extra,
                          watched=watched)
    return server.run_foreground(args.timeout, lambda: (
        f"tritonserver ready: HTTP http://127.0.0.1:{args.http_port}  gRPC 127.0.0.1:{args.grpc_port}  "
        f"metrics http://127.0.0.1:{args.metrics_port}/metrics"))


if __name__ == "__main__":
    sys.exit(main())
