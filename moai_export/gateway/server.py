"""Run the gateway with uvicorn. SIGTERM, SIGHUP and Ctrl-C stop accepting connections and let
the requests in flight finish, for up to `drain_timeout` seconds (a second Ctrl-C: at once)."""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager

import uvicorn

from .config import GatewayConfig

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def build_app(config: GatewayConfig):
    from .app import create_app

    return create_app(config.validate())


def serve(config: GatewayConfig, *, log_level: str = "info") -> int | None:
    """Serve until a stop signal and the drain after it; returns the signal's number (the command
    exits 128 + it, as the launchers do)."""
    from .protocol import guarded_protocol

    app = build_app(config)
    logging.getLogger("moai_export.gateway").info("serving %s", config.name)
    # access log off: request lines are in /metrics; headers (keys) are never logged.
    # Keep-alive longer than clients' own idle timeouts (aiohttp 15 s, httpx 5 s): a server that
    # closes an idle connection first races a client sending on it (a request lost in transit).
    # uvloop and httptools (C parsers) instead of asyncio's loop and h11: measured on 2 vCPUs the
    # gateway's own CPU per request fell enough to move its overhead over Triton from ~20% to ~12%;
    # the protocol around httptools adds the header and read limits uvicorn lacks.
    # No WebSocket, no `server: uvicorn` header (nothing about the stack to anyone who asks).
    server = DrainingServer(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, access_log=False, server_header=False,
        timeout_graceful_shutdown=config.drain_timeout, timeout_keep_alive=75, backlog=2048, loop="uvloop",
        http=guarded_protocol(config, app.state.gateway.metrics), ws="none"))
    server.run()
    return server.stopped_by


class DrainingServer(uvicorn.Server):
    """uvicorn's server stopping gracefully on SIGHUP too, and reporting the signal instead of
    raising it again: uvicorn leaves SIGHUP's default (die at once, every request in flight cut)
    and re-raises SIGINT under its previous handler, which under a parent that ignores SIGINT (a
    background job) meant exit 0."""

    stopped_by: int | None = None

    @contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame) -> None:
        if self.stopped_by is None:
            self.stopped_by = sig
        super().handle_exit(sig, frame)
