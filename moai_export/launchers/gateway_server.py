"""Start `moai-export gateway` as a managed process (the demo, benchmarks): the same launcher
base as Triton and vLLM, so it is stopped with its process group and ready means /health is
200, i.e. the gateway reaches a ready Triton."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .process import HttpHealthServer

GRPC_RESOLVERS = ("dns:", "ipv4:", "ipv6:")  # a --triton value that is a gRPC target already


@dataclass
class GatewayServer(HttpHealthServer):
    triton_grpc: str  # HOST:PORT, or a gRPC target naming several replicas (ipv4:A:P,B:Q; dns:///NAME:PORT)
    model: str
    port: int = 8080
    host: str = "127.0.0.1"
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    process: object = None
    label = "gateway"
    workdir_prefix = "moai-gateway-"
    stop_grace = 30.0  # above the gateway's default --drain-timeout (GatewayConfig.drain_timeout): in-flight requests finish

    def command(self) -> tuple[list[str], dict[str, str]]:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        return [sys.executable, "-m", "moai_export.commands.export_cli", "gateway", "--triton", self.triton_target,
                "--model", self.model, "--host", self.host,
                "--port", str(self.port), "--log-level", "warning", *self.extra_args], env

    @property
    def triton_target(self) -> str:
        """What --triton gets: a gRPC target as it is, HOST:PORT as a grpc:// URL."""
        return self.triton_grpc if self.triton_grpc.startswith(GRPC_RESOLVERS) else f"grpc://{self.triton_grpc}"

    def start(self, timeout: float = 60.0) -> "GatewayServer":
        return super().start(timeout)
