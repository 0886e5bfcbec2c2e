"""The gateway's Starlette app: OpenAI's `/v1/embeddings` and `/v1/models`, `/health/live`,
`/health/ready` (= `/health`: ready only while a real embedding through the upstream, Triton or
vLLM, passes, see probe.py) and `/metrics`.

The kind is never guessed: a request chooses query or document with `input_type`, or by naming
the model alias NAME:query / NAME:document (each listed by /v1/models); one that does neither is
refused with 400 unless the deployment chose a default (`default_input_type`).

Over-length input is never silent: texts cut to the contract's max_tokens are listed in
`usage.truncated_inputs` and the X-Moai-Truncated-Inputs header, or refused (`truncate` off).

Overload: at most `max_in_flight` requests go upstream at once, up to `max_queue` more wait
(each for at most the upstream timeout, then 503); beyond that a request is refused at once
with 429 and Retry-After. Every request gets an answer: a vector for each of its texts, or an
error in OpenAI's shape; never a lost request, never a vector for another text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from contextlib import asynccontextmanager

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.contract import KINDS, check_dimensions, truncate_dimensions
from ..core.errors import MoaiError
from ..core.input_rules import InvalidInput, check_texts
from ..embedders.base import check_vectors
from .auth import KeyChecker
from .config import GatewayConfig
from .errors import ApiError, internal_error, invalid_input, unavailable
from .metrics import GatewayMetrics
from .probe import ReadinessProbe
from .upstream import Embedded, open_upstream

ENCODING_FORMATS = ("float", "base64")
TRUNCATED_HEADER = "X-Moai-Truncated-Inputs"  # positions in `input` of the texts cut to max_tokens


class Gateway:
    """State shared by the routes: the upstream, limits, keys, metrics and the overload gate."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.upstream = open_upstream(config)
        self.keys = KeyChecker(config.api_keys)
        self.probe = ReadinessProbe(self.upstream)
        self.metrics = GatewayMetrics()
        self.upstream.on_retry = lambda reason: self.metrics.retries.labels(reason).inc()
        self._slots: asyncio.Semaphore | None = None
        self.waiting = 0

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.max_in_flight)
        return self._slots

    # -- request parsing ------------------------------------------------------------------------

    async def read_json(self, request: Request) -> dict:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"Request body is {declared} bytes; the limit is {limit}.", code="request_too_large")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise ApiError(413, f"Request body is over the limit of {limit} bytes.", code="request_too_large")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
        except RecursionError:  # Python's parser recurses per level: [[[[...]]]] exhausts the stack
            raise ApiError(400, "The request body's JSON is nested too deeply.", code="invalid_json") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
        return payload

    def parse(self, payload: dict) -> tuple[list[str], str, str, int | None]:
        """(texts, kind, encoding_format, dimensions) of a valid request, else a 400 naming the field."""
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' is required (see GET /v1/models).", param="model", code="missing_model")
        if model not in self.config.model_names:
            raise ApiError(404, f"The model '{model}' does not exist; this gateway serves "
                                f"{' / '.join(repr(name) for name in self.config.model_names)}.",
                           param="model", code="model_not_found")
        texts = payload.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts:
            raise ApiError(400, "'input' must be a string or a non-empty list of strings.", param="input",
                           code="invalid_input")
        try:
            texts = check_texts(texts, max_texts=self.config.max_texts, max_chars=self.config.max_chars)
        except InvalidInput as error:
            raise invalid_input(error) from None
        kind = self.kind_of(payload, model)
        encoding = payload.get("encoding_format") or "float"
        if encoding not in ENCODING_FORMATS:
            raise ApiError(400, f"'encoding_format' must be float or base64, not {encoding!r}.",
                           param="encoding_format", code="invalid_encoding_format")
        dims = payload.get("dimensions")
        user = payload.get("user")
        if user is not None and not isinstance(user, str):
            raise ApiError(400, "'user' must be a string.", param="user", code="invalid_user")
        return texts, kind, encoding, dims

    def kind_of(self, payload: dict, model: str) -> str:
        """The kind the request chose (its `input_type`, or the alias it names as `model`), else the
        deployment's explicit default; never a guess: a query embedded as a document loses its
        instruction and still looks like a good vector."""
        asked = payload.get("input_type")
        if asked is not None and asked not in KINDS:
            raise ApiError(400, f"'input_type' must be one of {', '.join(KINDS)}, not {asked!r}.",
                           param="input_type", code="invalid_input_type")
        named = self.config.model_names[model]
        if asked is not None and named is not None and asked != named:
            raise ApiError(400, f"The model '{model}' embeds every text as a {named}, but 'input_type' is "
                                f"{asked!r}: send one of the two.", param="input_type", code="conflicting_input_type")
        kind = asked or named or self.config.default_input_type
        if kind is None:
            name = self.config.name
            raise ApiError(400, f"'input_type' is required: this model embeds a query and a document differently "
                                f"(a query embedded as a document loses its instruction). Choose the kind in one "
                                f"of two ways: send \"input_type\": \"query\" or \"document\" in the body (with the "
                                f"OpenAI client: extra_body={{\"input_type\": \"query\"}}), or name the model "
                                f"'{name}:query' or '{name}:document' (listed by GET /v1/models).",
                           param="input_type", code="missing_input_type")
        return kind

    # -- the overload gate ----------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self):
        if self.slots.locked() and self.waiting >= self.config.max_queue:
            raise ApiError(429, "The gateway is at capacity; retry shortly.", code="overloaded", retry_after=1)
        self.waiting += 1
        try:
            await asyncio.wait_for(self.slots.acquire(), self.config.upstream_timeout)
        except asyncio.TimeoutError:
            raise unavailable("No capacity within the timeout; retry shortly.") from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.slots.release()

    # -- routes ---------------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        self.keys.check(request.headers.get("authorization"))
        texts, kind, encoding, dims = self.parse(await self.read_json(request))
        async with self.slot(), self.probe.watching():
            contract = await self.upstream.connect()
            if dims is not None:
                try:
                    dims = check_dimensions(dims, contract)
                except MoaiError as exc:
                    raise ApiError(400, str(exc), param="dimensions", code="invalid_dimensions") from None
            # usage and lengths come back with the vectors (the backend's own counts)
            embedded = await self.upstream.embed(texts, kind, self.config.chunk)
        truncated = embedded.truncated
        if truncated and not self.config.truncate:
            raise _over_length(embedded)
        try:
            vectors = check_vectors(embedded.vectors, (len(texts), contract.dims), self.upstream.describe())
        except MoaiError as exc:  # a zero vector is never an answer
            raise ApiError(502, str(exc), code="upstream_error") from None
        vectors = truncate_dimensions(vectors, dims or contract.dims, contract.normalize)
        self.metrics.tokens.inc(embedded.prompt_tokens)
        self.metrics.texts.inc(len(texts))
        self.metrics.truncated.inc(len(truncated))
        data = [{"object": "embedding", "index": i, "embedding": _encode(vector, encoding)}
                for i, vector in enumerate(vectors)]
        usage = {"prompt_tokens": embedded.prompt_tokens, "total_tokens": embedded.prompt_tokens,
                 "truncated_inputs": truncated}
        headers = {TRUNCATED_HEADER: ",".join(map(str, truncated))} if truncated else None
        return JSONResponse({"object": "list", "data": data, "model": self.config.name, "usage": usage},
                            headers=headers)

    async def models(self, request: Request) -> Response:
        self.keys.check(request.headers.get("authorization"))
        # moai_max_texts: the batch size clients of this toolkit send (openai-http://, moai_export.integrations)
        card = {"object": "model", "created": 0, "owned_by": "moai-export", "moai_max_texts": self.config.max_texts}
        try:  # what they need to check parity (openai-http:// Embedder)
            contract = await self.upstream.connect()
            card.update(moai_contract=contract.to_dict(), moai_precision=self.upstream.precision)
        except ApiError:
            pass  # the upstream down: the card without them
        # the server behind: an openai-http target is judged by its gate family (artifacts/kinds.py)
        card["moai_backend"] = self.upstream.backend
        # one card per name a request may send; moai_input_type: the kind it gets without input_type (None: 400)
        cards = {name: {"id": name, **card, "moai_input_type": kind or self.config.default_input_type}
                 for name, kind in self.config.model_names.items()}
        if "model" in request.path_params:
            if request.path_params["model"] not in cards:
                raise ApiError(404, f"The model '{request.path_params['model']}' does not exist.",
                               param="model", code="model_not_found")
            return JSONResponse(cards[request.path_params["model"]])
        return JSONResponse({"object": "list", "data": list(cards.values())})

    async def health(self, request: Request) -> Response:
        """Readiness: the last end-to-end probe passed (and no 5xx from the upstream since). Probes
        need no key; where the upstream is and what it serves is told to key holders only."""
        insider = self.keys.enabled and self.keys.accepts(request.headers.get("authorization"))
        if self.probe.ready:
            details = {"upstream": self.upstream.address, "model": self.upstream.model,
                       "backend": self.upstream.backend} if insider else {}
            return JSONResponse({"status": "ready", **details})
        raise unavailable(f"{self.upstream.describe()} is not ready: {self.probe.reason}"
                          if insider else "The upstream model is not ready.")

    async def live(self, request: Request) -> Response:
        """Liveness: the process runs and its event loop answers, whatever the upstream does."""
        return JSONResponse({"status": "alive"})

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")


def _over_length(embedded: Embedded) -> ApiError:
    """The refusal of texts over max_tokens, each named with its length (truncation off)."""
    named = ", ".join(f"input[{i}] has {embedded.untruncated[i]} tokens" for i in embedded.truncated[:5])
    more = len(embedded.truncated) - 5
    return ApiError(400, f"{named}{f' (and {more} more)' if more > 0 else ''}: over the model's max_tokens "
                         f"{embedded.max_tokens} (prompt and end token included). This gateway refuses over-length "
                         "input instead of truncating it (--truncate false): shorten or split the text.",
                    param="input", code="input_too_long")


def _encode(vector: np.ndarray, encoding: str):
    if encoding == "base64":  # what the openai client asks for by default: little-endian float32
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


def create_app(config: GatewayConfig) -> Starlette:
    gateway = Gateway(config)

    def measured(route: str, handler):
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            gateway.metrics.in_flight.inc()
            try:
                response = await handler(request)
            except ApiError as error:
                response = error.response()
                gateway.metrics.errors.labels(route, error.code or str(error.status)).inc()
            except ClientDisconnect:  # the client left mid-request: nobody to answer
                response = Response(status_code=499)
                gateway.metrics.errors.labels(route, "client_disconnect").inc()
            except Exception as exc:  # a bug: answered in OpenAI's shape, counted, the traceback logged
                logging.getLogger("moai_export.gateway").exception("%s: internal error", route)
                response = internal_error(exc).response()
                gateway.metrics.errors.labels(route, "internal_error").inc()
            finally:
                gateway.metrics.in_flight.dec()
            gateway.metrics.requests.labels(route, str(response.status_code)).inc()
            gateway.metrics.latency.labels(route).observe(time.perf_counter() - started)
            return response

        return endpoint

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                        code="not_found" if exc.status_code == 404 else None).response()

    async def server_error(request: Request, exc: Exception) -> Response:
        return internal_error(exc).response()

    @asynccontextmanager
    async def lifespan(app):
        gateway.probe.start()
        yield
        await gateway.probe.stop()
        await gateway.upstream.close()

    routes = [
        Route("/v1/embeddings", measured("embeddings", gateway.embeddings), methods=["POST"]),
        Route("/v1/models", measured("models", gateway.models), methods=["GET"]),
        Route("/v1/models/{model:path}", measured("models", gateway.models), methods=["GET"]),
        Route("/health", measured("health", gateway.health), methods=["GET"]),
        Route("/health/ready", measured("health", gateway.health), methods=["GET"]),
        Route("/health/live", gateway.live, methods=["GET"]),
        Route("/metrics", gateway.metrics_page, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found, Exception: server_error},
                    lifespan=lifespan)
    app.state.gateway = gateway
    return app
