"""What the gateway needs of the server it fronts, whichever it is: Triton's ensemble
(triton_upstream.py) or a vLLM server of a `moai-export vllm` directory (vllm_upstream.py).

Both learn the contract from the artifact they serve, answer with the backend's own token counts
(usage) and with each text's length before truncation, so every policy of the gateway (kind,
empty text, `dimensions`, keys, limits, metrics, usage, truncation, readiness) is written once,
in app.py, for both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..core.contract import EmbeddingContract

BACKENDS = ("triton", "vllm")  # also the gate family an openai-http target in front of each is judged by


@dataclass(frozen=True)
class Embedded:
    """One upstream answer for n texts."""

    vectors: np.ndarray  # [n, dims], full width, in input order
    prompt_tokens: int  # the backend's own count of what it embedded (after truncation): the usage
    untruncated: tuple[int, ...]  # each text's tokens before truncation (prompt and end token included)
    max_tokens: int  # the contract's: longer texts were cut to it, the end token kept last

    @property
    def truncated(self) -> list[int]:
        """Positions of the texts that were cut."""
        return [i for i, count in enumerate(self.untruncated) if count > self.max_tokens]

    @classmethod
    def joined(cls, parts: list["Embedded"]) -> "Embedded":
        """The answers of consecutive chunks of one request, as one."""
        return cls(np.concatenate([part.vectors for part in parts]), sum(part.prompt_tokens for part in parts),
                   tuple(count for part in parts for count in part.untruncated), parts[0].max_tokens)


class Upstream(ABC):
    """The server behind the gateway. Failures are ApiErrors: 503 (`unavailable`) while it is down
    or restarting, so clients retry; 502 for an answer that cannot be used."""

    backend: str  # one of BACKENDS: the model card's moai_backend
    label: str  # its name in messages ("Triton", "vLLM")
    address: str  # where it is (told to key holders by /health)
    model: str  # the model it serves under that name
    precision: str = "fp32"  # picks the gate (readiness probe, openai-http targets)

    def describe(self) -> str:
        return f"{self.label} at {self.address} (model {self.model!r})"

    def on_retry(self, reason: str) -> None:
        """Called before a failed call is tried again on another replica (the gateway counts them)."""

    @abstractmethod
    async def ready(self) -> bool:
        """The server answers and serves the model (each check bounded by the ready timeout)."""

    @abstractmethod
    async def connect(self) -> EmbeddingContract:
        """The contract served (an ApiError while it cannot be known)."""

    @abstractmethod
    async def embed(self, texts: list[str], kind: str, chunk: int | None = None) -> Embedded:
        """Full-width vectors of `texts` embedded as `kind`, with their token counts."""

    async def close(self) -> None:
        pass


def first_line(exc: Exception) -> str:
    """An exception in one line, for an error message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_upstream(config) -> Upstream:
    """The upstream a GatewayConfig names (exactly one backend: GatewayConfig.validate checks it)."""
    if config.vllm:
        from .vllm_upstream import VllmUpstream

        return VllmUpstream(config.vllm, config.vllm_artifact, config.model, timeout=config.upstream_timeout,
                            ready_timeout=config.ready_timeout)
    from .triton_upstream import TritonUpstream

    return TritonUpstream(config.triton, config.model, timeout=config.upstream_timeout,
                          ready_timeout=config.ready_timeout)
