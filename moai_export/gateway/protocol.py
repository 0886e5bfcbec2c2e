"""uvicorn's HTTP protocol (httptools, C) with the limits a server on the open internet needs,
which uvicorn 0.54 does not enforce on it (no header size, header count or read timeouts):

  - a request's line and headers end within `max_header_bytes` (counted per read) and
    `max_headers` headers: else 431;
  - they arrive within `header_timeout` seconds, from the connection's start or, on a kept-alive
    connection, from the first byte of the next request (uvicorn's keep-alive timeout covers the
    idle time before it): else 408; a connection that sent nothing is closed without a word;
  - the body arrives within `body_timeout` seconds after the headers: else 408;
  - a request the parser cannot read gets 400.

Each refusal is OpenAI's error JSON with `Connection: close` (where the next request would start
is unknown), counted in the gateway's metrics under the route "http". Without these a client
could hold a connection for ever with a few bytes, or grow the parser's buffer to any size.
"""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .config import GatewayConfig
from .errors import ApiError
from .metrics import GatewayMetrics


def guarded_protocol(config: GatewayConfig, metrics: GatewayMetrics) -> type[HttpToolsProtocol]:
    """The class for uvicorn's `http=`: GuardedProtocol with this gateway's limits and metrics."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": config, "metrics": metrics})


class GuardedProtocol(HttpToolsProtocol):
    limits: GatewayConfig
    metrics: GatewayMetrics

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_bytes: int | None = None  # bytes of a begun request's headers so far; None between
        self._headers_seen = 0
        self._deadline = None
        self._arm(self.limits.header_timeout, self._headers_late)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no protocol upgrades here (no WebSocket, no h2c): the request is answered as HTTP/1.1
        except httptools.HttpParserError as error:
            refused = error.__context__  # raised by a callback below: the parser wraps it
            if not isinstance(refused, ApiError):
                refused = ApiError(400, f"The request is not valid HTTP/1.1 ({error}).", code="invalid_http")
            self.refuse(refused)
            return
        if self._header_bytes is not None:
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self.refuse(ApiError(431, f"The request's line and headers are over the limit of "
                                          f"{self.limits.max_header_bytes} bytes.", code="headers_too_large"))

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._headers_seen = 0
        if self._deadline is None:  # a kept-alive connection: its next request starts now
            self._arm(self.limits.header_timeout, self._headers_late)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers_seen += 1
        if self._headers_seen > self.limits.max_headers:
            raise ApiError(431, f"The request has more than {self.limits.max_headers} headers.",
                           code="too_many_headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        self._arm(self.limits.body_timeout, self._body_late)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # -- deadlines and refusals -----------------------------------------------------------------

    def _arm(self, seconds: float, late) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self._header_bytes is None:  # not a byte of a request: an idle connection, closed quietly
            self.transport.close()
            return
        self.refuse(ApiError(408, f"The request's headers did not arrive within {self.limits.header_timeout:g} s.",
                             code="header_timeout"))

    def _body_late(self) -> None:
        self._deadline = None
        self.refuse(ApiError(408, f"The request's body did not arrive within {self.limits.body_timeout:g} s.",
                             code="body_timeout"))

    def refuse(self, error: ApiError) -> None:
        """Answer `error` (unless an answer to this request, or to an earlier pipelined one, is
        still owed or already begun: the bytes would land in the wrong place) and close."""
        self._disarm()
        self.metrics.errors.labels("http", error.code).inc()
        self.metrics.requests.labels("http", str(error.status)).inc()
        cycle = self.cycle
        if self._header_bytes is not None:  # reading headers: this request has no cycle yet
            can_answer = cycle is None or cycle.response_complete
        else:
            can_answer = cycle is not None and not self.pipeline and not cycle.response_started
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # what the app still sends goes nowhere,
            cycle.message_event.set()  # and its wait for more body ends
        if can_answer and not self.transport.is_closing():
            self.transport.write(_raw_response(error, self.server_state.default_headers))
        self.transport.close()


def _raw_response(error: ApiError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = error.response().body
    head = [STATUS_LINE[error.status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
             b"\r\nconnection: close\r\n\r\n"]
    return b"".join(head) + body
