"""Triton's ensemble over async gRPC, as the gateway's upstream (upstream.py): many requests in
flight on one channel, a timeout on every call, and Triton down / restarting reported as `unavailable` (503)
instead of a hang. The channel reconnects by itself (short backoff), so the gateway recovers
when Triton is back without a restart of its own; the served contract is read again at most
CONFIG_REFRESH_S after, as Triton may come back serving another repository (another precision,
even other dims).

Replicas: `--triton` may name several servers as one gRPC target (`dns:///triton-headless.NS.svc:8001`,
whose name resolves to every pod, or `ipv4:IP:PORT,IP:PORT`). The channel balances calls across
them with gRPC's own `round_robin` policy, which sends each call to the next replica that is
connected and skips those it cannot reach. A call that fails (a replica killed or restarting,
a broken model answering errors, an unusable answer) is tried again, up to ATTEMPTS tries within
the call's timeout: embeddings are idempotent, and each chunk's answer is kept only once, so a
retry never duplicates or misplaces a vector."""

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
    # several replicas behind one target: each call to the next connected one, not all to the first
    ("grpc.lb_policy_name", "round_robin"),
]
RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "ABORTED")
# Tries of one call (round_robin gives each try the next replica), paused RETRY_PAUSE_S x the try
# before the next: long enough for gRPC to notice a replica that went away, short against the timeout.
ATTEMPTS = 4
RETRY_PAUSE_S = 0.05
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
            config = await self._retrying(self._config_once, self.ready_timeout * ATTEMPTS)
        except FailedTry as failed:
            raise unavailable(f"Triton at {self.url}: cannot read the config of {self.model!r} ({failed.message})")
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
        try:
            return await self._retrying(lambda timeout: self._infer_once(texts, kind, timeout), self.timeout)
        except FailedTry as failed:
            raise await self._final_error(failed) from None

    async def _retrying(self, call, budget: float):
        """`call(timeout)`, tried again (round_robin: on the next replica) while tries and the
        `budget` in seconds remain; the last FailedTry when none succeeded."""
        deadline = time.monotonic() + budget
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await call(deadline - time.monotonic())
            except FailedTry as failed:
                pause = RETRY_PAUSE_S * attempt
                if attempt == ATTEMPTS or time.monotonic() + pause >= deadline:
                    raise
                self.on_retry(failed.reason)
                await asyncio.sleep(pause)

    async def _config_once(self, timeout: float) -> dict:
        try:
            return (await self.client.get_model_config(self.model, as_json=True, client_timeout=timeout))["config"]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise FailedTry.of(exc) from None

    async def _infer_once(self, texts: list[str], kind: str, timeout: float) -> Embedded:
        import tritonclient.grpc.aio as grpc_aio

        outputs = [grpc_aio.InferRequestedOutput(name) for name in ("EMBEDDING", TOKENS, UNTRUNCATED_TOKENS)]
        try:
            result = await self.client.infer(self.model, ensemble_inputs(grpc_aio, texts, kind), outputs=outputs,
                                             client_timeout=timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise FailedTry.of(exc) from None
        vectors = result.as_numpy("EMBEDDING")
        tokens, untruncated = result.as_numpy(TOKENS), result.as_numpy(UNTRUNCATED_TOKENS)
        if vectors is None or vectors.shape[0] != len(texts):
            raise FailedTry("bad_answer", f"Triton returned {None if vectors is None else vectors.shape[0]} vectors "
                                          f"for {len(texts)} texts")
        if any(counts is None or counts.size != len(texts) for counts in (tokens, untruncated)):
            raise FailedTry("bad_answer", f"Triton returned no token count for each of {len(texts)} texts")
        return Embedded(vectors, int(tokens.sum()), tuple(int(n) for n in untruncated.reshape(-1)),
                        self.contract.max_tokens)

    async def _final_error(self, failed: "FailedTry") -> ApiError:
        """What the client gets when no try succeeded: 503 (retry later) while Triton is unreachable
        or not ready (a server shutting down or restarting answers with all sorts of errors: model
        not found, stub unhealthy), 502 for a ready server that answers wrongly."""
        if failed.reason == "unavailable" or not await self.ready():
            self._read_at = float("-inf")  # Triton is restarting: read the config again when it is back
            return unavailable(f"Triton at {self.url} is unavailable ({failed.message})")
        return ApiError(502, f"Triton at {self.url}: {failed.message}", code="upstream_error")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class FailedTry(Exception):
    """One try of a Triton call that failed; `reason` (unavailable | model_error | bad_answer)
    labels the retry in /metrics."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message

    @classmethod
    def of(cls, exc: Exception) -> "FailedTry":
        """A failed gRPC call: unreachable (by its status code), else the model's own error."""
        status = str(getattr(exc, "status", lambda: "")() or "")
        return cls("unavailable" if any(word in status for word in RETRYABLE) else "model_error", first_line(exc))
