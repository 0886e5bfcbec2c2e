"""What one gateway serves, how much it accepts, and who may call it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ..core.addresses import parse_grpc_target, parse_url
from ..core.errors import MoaiError
from ..core.input_rules import KINDS

API_KEYS_ENV = "MOAI_GATEWAY_API_KEYS"  # comma-separated keys


@dataclass
class GatewayConfig:
    # exactly one backend: Triton's gRPC target, as a gRPC channel takes it (HOST:PORT, or several
    # replicas: dns:///HOST:PORT, ipv4:IP:PORT,IP:PORT; see triton_upstream.py), or a vLLM
    # server's base URL (http://HOST:PORT) with the `moai-export vllm` directory it serves
    triton: str | None = None
    model: str | None = None  # the ensemble's name in Triton; vLLM's served model (default: the artifact's)
    served_model_name: str | None = None  # what /v1/models lists and requests name (default: model)
    vllm: str | None = None
    vllm_artifact: Path | None = None
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
    # What a client on the open internet may hold: a request's line and headers must arrive within
    # header_timeout seconds (from the connection, or from the first byte of the next request on a
    # kept-alive one) and within max_header_bytes / max_headers (431 above); its body within
    # body_timeout seconds after the headers (408 on either timeout).
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    # SIGTERM / SIGHUP / Ctrl-C: stop accepting, let requests in flight finish for up to this long
    # (keep a container's grace period above it: Kubernetes' default is 30 s)
    drain_timeout: float = 25.0
    no_auth: bool = False  # serve without API keys on a non-loopback address (an explicit choice)
    # a text over the contract's max_tokens: cut (the end token kept last) and reported in usage and
    # a header (True), or refused with a 400 naming it (False); never silent
    truncate: bool = True
    # The kind of a request that names none (no `input_type`, no NAME:query / NAME:document model).
    # None refuses it with 400: the model embeds a query with an instruction a document lacks, and
    # a stock client (OpenAI, LangChain, LlamaIndex) sends no kind, so any guess is silently wrong
    # for half of its texts. A deployment whose clients send one kind only may choose it here.
    default_input_type: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    @property
    def backend(self) -> str:
        return "vllm" if self.vllm else "triton"

    @property
    def model_names(self) -> dict[str, str | None]:
        """What a request may send as `model` -> the kind that name selects: NAME (the request's
        `input_type` decides), NAME:query and NAME:document (for clients that cannot add a field)."""
        return {self.name: None, **{f"{self.name}:{kind}": kind for kind in KINDS}}

    def kind_rule(self) -> str:
        """What a request that names no kind gets, as the gateway says it at start."""
        if self.default_input_type is None:
            return (f"a request must choose the kind (input_type query|document, or the model {self.name}:query "
                    f"/ {self.name}:document); without one it is refused with 400")
        return (f"a request without input_type or a kind alias is embedded as a {self.default_input_type} "
                f"(--default-input-type)")

    def validate(self) -> "GatewayConfig":
        self.check_backend()
        for label, value in (("--max-texts", self.max_texts), ("--max-chars", self.max_chars),
                             ("--max-body-bytes", self.max_body_bytes), ("--max-in-flight", self.max_in_flight),
                             ("--max-header-bytes", self.max_header_bytes), ("--max-headers", self.max_headers)):
            if value < 1:
                raise MoaiError(f"{label} must be at least 1, not {value}")
        for label, value in (("--timeout", self.upstream_timeout), ("--header-timeout", self.header_timeout),
                             ("--body-timeout", self.body_timeout)):
            if value <= 0:
                raise MoaiError(f"{label} must be positive, not {value}")
        if self.drain_timeout < 0:
            raise MoaiError(f"--drain-timeout must be at least 0, not {self.drain_timeout}")
        if self.default_input_type not in (None, *KINDS):
            raise MoaiError(f"--default-input-type must be one of {', '.join(KINDS)}, not {self.default_input_type!r}")
        self.check_access()
        return self

    def check_backend(self) -> None:
        """Exactly one server behind the gateway, and what it needs to be fronted."""
        if bool(self.triton) == bool(self.vllm):
            raise MoaiError("give the gateway exactly one backend: --triton grpc://HOST:PORT --model NAME, "
                            "or --vllm http://HOST:PORT --vllm-artifact DIR")
        if self.triton:
            parse_triton_url(self.triton)
            if not self.model:
                raise MoaiError("--triton needs --model (the ensemble's name in Triton, e.g. moai_embedding)")
            return
        self.vllm = parse_vllm_url(self.vllm)
        if self.vllm_artifact is None:
            raise MoaiError("--vllm needs --vllm-artifact DIR: the directory `moai-export vllm` wrote, which the "
                            "gateway reads the contract and tokenizer from")
        from ..artifacts.kinds import kind_named
        from ..launchers.vllm_server import VllmServer

        kind_named("vllm").check_directory(str(self.vllm_artifact))
        # vLLM serves the artifact under its served_model_name unless the launch said otherwise
        self.model = self.model or VllmServer(self.vllm_artifact).serve_args()["served_model_name"]

    def check_access(self) -> None:
        """Keys, or an open gateway that only this machine can reach, or --no-auth said out loud."""
        if self.no_auth and self.api_keys:
            raise MoaiError("--no-auth and API keys contradict each other: give one or the other")
        if not self.api_keys and not self.no_auth and not is_loopback(self.host):
            raise MoaiError(f"no API key for a gateway on {self.host}, which other machines can reach: give keys "
                            f"(--api-key, --api-key-file, ${API_KEYS_ENV}) or serve it open with --no-auth")


def parse_triton_url(url: str) -> str:
    """grpc://HOST:PORT, HOST:PORT or a gRPC target naming several replicas (dns:///HOST:PORT,
    ipv4:IP:PORT,IP:PORT) -> the target for Triton's gRPC channel, which balances across them."""
    return str(parse_grpc_target(url, "--triton"))


def parse_vllm_url(url: str) -> str:
    """http://HOST:PORT (or https://) of a vLLM server -> its base URL, as the upstream calls it."""
    scheme, endpoint = parse_url(url, ("http", "https"), "--vllm")
    return f"{scheme}://{endpoint}"


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach an address the gateway binds."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def load_api_keys(keys: tuple[str, ...] = (), key_file: Path | None = None, environ: dict | None = None) -> tuple[str, ...]:
    """Keys from the flag, the MOAI_GATEWAY_API_KEYS variable and a file (one key a line, # comments).
    A source that is given but holds no key is an error: an empty secret must not start an open gateway."""
    import os

    environ = os.environ if environ is None else environ
    found = []
    for key in keys:
        found += _holding_keys([key.strip()], "--api-key")
    if API_KEYS_ENV in environ:
        found += _holding_keys([k.strip() for k in environ[API_KEYS_ENV].split(",")], f"${API_KEYS_ENV}")
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise MoaiError(f"--api-key-file {key_file}: {exc.strerror}") from None
        found += _holding_keys([line.strip() for line in lines if not line.lstrip().startswith("#")],
                               f"--api-key-file {key_file}")
    return tuple(dict.fromkeys(found))


def _holding_keys(candidates: list[str], source: str) -> list[str]:
    keys = [k for k in candidates if k]
    if not keys:
        raise MoaiError(f"{source} holds no API key (it is empty, blank or only comments); "
                        "refusing to start a gateway its owner meant to protect")
    return keys
