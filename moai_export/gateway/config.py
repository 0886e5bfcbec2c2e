"""What one gateway serves and how much it accepts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.addresses import parse_grpc_target
from ..core.errors import MoaiError

API_KEYS_ENV = "MOAI_GATEWAY_API_KEYS"  # comma-separated keys


@dataclass
class GatewayConfig:
    triton: str  # Triton's gRPC endpoint, as a gRPC channel takes it (HOST:PORT)
    model: str  # the ensemble's name in Triton
    served_model_name: str | None = None  # what /v1/models lists and requests name (default: model)
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()
    max_texts: int = 256  # texts per request
    max_chars: int = 32_768  # characters per text
    max_body_bytes: int = 4 * 1024 * 1024
    max_in_flight: int = 32  # requests to Triton at once; more wait in the queue
    max_queue: int = 512  # waiting requests beyond that are refused with 429
    upstream_timeout: float = 30.0  # seconds for one Triton call
    ready_timeout: float = 2.0  # seconds for one readiness check
    chunk: int | None = None  # texts per Triton request (default: the model's max batch size)
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    def validate(self) -> "GatewayConfig":
        parse_triton_url(self.triton)
        for label, value in (("--max-texts", self.max_texts), ("--max-chars", self.max_chars),
                             ("--max-body-bytes", self.max_body_bytes), ("--max-in-flight", self.max_in_flight)):
            if value < 1:
                raise MoaiError(f"{label} must be at least 1, not {value}")
        if self.upstream_timeout <= 0:
            raise MoaiError(f"--timeout must be positive, not {self.upstream_timeout}")
        return self


def parse_triton_url(url: str) -> str:
    """grpc://HOST:PORT (or HOST:PORT, dns:///HOST:PORT) -> the target for Triton's gRPC client.
    One server: failing over across several is not built yet."""
    target = parse_grpc_target(url, "--triton")
    target.single("--triton")
    return str(target)


def load_api_keys(keys: tuple[str, ...] = (), key_file: Path | None = None, environ: dict | None = None) -> tuple[str, ...]:
    """Keys from the flag, the MOAI_GATEWAY_API_KEYS variable and a file (one key a line, # comments)."""
    import os

    environ = os.environ if environ is None else environ
    found = [k.strip() for k in keys]
    found += [k.strip() for k in environ.get(API_KEYS_ENV, "").split(",")]
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise MoaiError(f"--api-key-file {key_file}: {exc.strerror}") from None
        found += [line.strip() for line in lines if not line.lstrip().startswith("#")]
    return tuple(dict.fromkeys(k for k in found if k))
