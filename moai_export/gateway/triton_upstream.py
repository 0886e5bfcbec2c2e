"""Triton's ensemble over async gRPC, as the gateway's upstream (upstream.py): many requests in
flight on one channel, a timeout on every call, and Triton down / restarting reported as `unavailable` (503)
instead of a hang. The channel reconnects by itself (short backoff), so the gateway recovers
when Triton is back without a restart of its own; the served contract is read again at most
CONFIG_REFRESH_S after, as Triton may come back serving another repository (another precision,
even other dims)."""

from __future__ import annotations

import asyncio
import logging
import time

from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError
from ..embedders.triton import ServedEnsemble, ensemble_inputs
from ..model_files.triton_config import TOKENS, UNTRUNCATED_TOKENS
from .errors import ApiError, unavailable
from .upstream import Embedded, Upstream, first_line

# Retry reconnecting quickly: gRPC's default backoff grows to 2 minutes, which would keep the
# gateway answering 503 long after Triton is back.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "ABORTED")
# How long the ensemble's config read from Triton is trusted: one cheap call per period, and at
# once after Triton failed a call, so a restart on another repository shows in the model card.
CONFIG_REFRESH_S = 5.0


class TritonUpstream(Upstream):
    backend, label = "triton", "Triton"

    def __init__(self, url: str, model: str, *, timeout: float, ready_timeout: float):
        self.url = self.address = url
        self.model = model
        self.timeout, self.ready_timeout = timeout, ready_timeout
        self.contract: EmbeddingContract | None = None
        self.max_batch_size = 1
        self.precision = "fp32"
        self.repository_id: str | None = None
        self._read_at = float("-inf")  # when the config was read (time.monotonic())
        self._client = None
        self._connect_lock = asyncio.Lock()

    @property
    def client(self):
        if self._client is None:  # created inside the running event loop
            import tritonclient.grpc.aio as grpc_aio

            self._client = grpc_aio.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        return self._client

    async def ready(self) -> bool:
        """Triton answers and the model is ready (each check bounded by ready_timeout)."""
        try:
            return bool(await self.client.is_server_ready(client_timeout=self.ready_timeout)
                        and await self.client.is_model_ready(self.model, client_timeout=self.ready_timeout))
        except Exception:  # connection refused, deadline, model unknown: not ready
            return False

    async def connect(self) -> EmbeddingContract:
        """The served contract and batch size, from the ensemble's config (read again when older
        than CONFIG_REFRESH_S)."""
        if self._fresh():
            return self.contract
        async with self._connect_lock:
            if not self._fresh():
                await self._read_config()
        return self.contract

    def _fresh(self) -> bool:
        return self.contract is not None and time.monotonic() - self._read_at < CONFIG_REFRESH_S

    async def _read_config(self) -> None:
        if self.contract is None and not await self.ready():
            raise unavailable(f"Triton at {self.url} has no ready model {self.model!r}")
        try:
            config = (await self.client.get_model_config(self.model, as_json=True,
                                                         client_timeout=self.ready_timeout))["config"]
        except Exception as exc:
            raise unavailable(f"Triton at {self.url}: cannot read the config of {self.model!r} ({first_line(exc)})")
        try:
            served = ServedEnsemble.from_config(config, f"model {self.model!r}")
        except MoaiError as exc:
            raise ApiError(500, str(exc), code="bad_upstream_model") from None
        # usage and truncation would need the tokenizer here again
        missing = [name for name, declared in ((TOKENS, served.counts_tokens),
                                               (UNTRUNCATED_TOKENS, served.reports_truncation)) if not declared]
        if missing:
            raise ApiError(500, f"model {self.model!r} has no {' or '.join(missing)} output: it was written by an "
                                "older `moai-export triton`; write the repository again", code="bad_upstream_model")
        if self.contract is not None and served.repository_id != self.repository_id:
            logging.getLogger("moai_export.gateway").warning(
                "Triton now serves another repository (id %s, precision %s)", served.repository_id, served.precision)
        self.max_batch_size, self.precision, self.contract = served.max_batch_size, served.precision, served.contract
        self.repository_id = served.repository_id
        self._read_at = time.monotonic()

    async def embed(self, texts: list[str], kind: str, chunk: int | None = None) -> Embedded:
        """Requests of at most the model's batch size, in flight together."""
        await self.connect()
        size = min(chunk or self.max_batch_size, self.max_batch_size)
        return Embedded.joined(await asyncio.gather(*(self._infer(texts[i:i + size], kind)
                                                      for i in range(0, len(texts), size))))

    async def _infer(self, texts: list[str], kind: str) -> Embedded:
        import tritonclient.grpc.aio as grpc_aio

        outputs = [grpc_aio.InferRequestedOutput(name) for name in ("EMBEDDING", TOKENS, UNTRUNCATED_TOKENS)]
        try:
            result = await self.client.infer(self.model, ensemble_inputs(grpc_aio, texts, kind), outputs=outputs,
                                             client_timeout=self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status = str(getattr(exc, "status", lambda: "")() or "")
            # A server shutting down or restarting answers with all sorts of errors (model not
            # found, stub unhealthy): whatever it says, while it is not ready the client may retry.
            if any(word in status for word in RETRYABLE) or not await self.ready():
                self._read_at = float("-inf")  # Triton is restarting: read the config again when it is back
                raise unavailable(f"Triton at {self.url} is unavailable ({first_line(exc)})") from None
            raise ApiError(502, f"Triton at {self.url}: {first_line(exc)}", code="upstream_error") from None
        vectors = result.as_numpy("EMBEDDING")
        tokens, untruncated = result.as_numpy(TOKENS), result.as_numpy(UNTRUNCATED_TOKENS)
        if vectors is None or vectors.shape[0] != len(texts):
            raise ApiError(502, f"Triton returned {None if vectors is None else vectors.shape[0]} vectors for "
                                f"{len(texts)} texts", code="upstream_error")
        if any(counts is None or counts.size != len(texts) for counts in (tokens, untruncated)):
            raise ApiError(502, f"Triton returned no token count for each of {len(texts)} texts", code="upstream_error")
        return Embedded(vectors, int(tokens.sum()), tuple(int(n) for n in untruncated.reshape(-1)),
                        self.contract.max_tokens)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
