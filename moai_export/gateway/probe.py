"""The gateway's readiness: a real embedding, end to end, not the upstream's word for it.

Triton answers ready while a model's python stub is dead and every request fails. So readiness
is a cached probe: one fixed short text embedded through the upstream (Triton or vLLM) every
`interval` seconds, and at once after any 5xx from it (which also marks the gateway not ready
until a probe passes again). The first good answer is the reference; a later answer outside the
artifact's gate of it (min cosine, by the backend's gate family and the precision it reports) is
a failure too.

Liveness is separate: the process runs and its event loop answers (`/health/live`); a failing
readiness takes the gateway out of a load balancer, it does not restart it.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import numpy as np

from ..core.errors import MoaiError
from ..embedders.base import check_vectors
from ..gates.table import gate_for
from .errors import ApiError

PROBE_TEXT = "health probe: 카드 연회비는 얼마인가요?"
PROBE_INTERVAL = 2.0  # seconds between probes while nothing goes wrong
UNKNOWN_GATE_MIN_COSINE = 0.99  # a precision without a gate: the loosest of the table


class ReadinessProbe:
    def __init__(self, upstream, *, interval: float = PROBE_INTERVAL):
        self.upstream = upstream
        self.interval = interval
        self.ready = False
        self.reason = "not probed yet"
        self.checked_at: float | None = None  # time.time() of the last probe
        self.reference: np.ndarray | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def _min_cosine(self) -> float:
        try:
            return gate_for(self.upstream.backend, self.upstream.precision).min_cosine
        except MoaiError:
            return UNKNOWN_GATE_MIN_COSINE

    async def check(self) -> bool:
        """Embed the probe text now; updates and returns readiness."""
        try:
            contract = await self.upstream.connect()
            embedded = await self.upstream.embed([PROBE_TEXT], "query")
            vector = check_vectors(embedded.vectors, (1, contract.dims), "the readiness probe")[0].astype(np.float64)
        except (ApiError, MoaiError) as exc:
            return self._set(False, str(exc))
        if not np.isfinite(vector).all():
            return self._set(False, "the probe's answer is not finite")
        vector /= np.linalg.norm(vector)
        if self.reference is None:
            self.reference = vector
        cosine = float(vector @ self.reference)
        if not cosine >= self._min_cosine():
            return self._set(False, f"the probe's answer is at cosine {cosine:.6f} to the first one "
                                    f"(gate {self._min_cosine()})")
        return self._set(True, "the end-to-end probe passes")

    def _set(self, ready: bool, reason: str) -> bool:
        self.ready, self.reason, self.checked_at = ready, reason, time.time()
        return ready

    def suspect(self, reason: str) -> None:
        """The upstream answered a 5xx: not ready until the next probe (run at once) passes."""
        self._set(False, reason)
        if self._wake is not None:
            self._wake.set()

    @asynccontextmanager
    async def watching(self):
        """Around calls to the upstream: a 5xx marks readiness failed at once."""
        try:
            yield
        except ApiError as error:
            if error.status >= 500:
                self.suspect(str(error))
            raise

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            await self.check()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:  # asyncio's, since Python 3.11
                pass

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
