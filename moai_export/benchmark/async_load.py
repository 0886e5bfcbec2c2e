"""Asyncio load generators for servers under test, with every request's outcome recorded.

`benchmark/load.py` drives an `encode(texts)` callable from threads and measures rates; this
module drives `send(index, kind, t0)` coroutines (text `index` of a pool, input `kind`, the
phase start `t0`) from one event loop, so thousands of requests can be in flight at once, and
records per request what a soak or fault test judges: the HTTP status (or the exception of a
lost request), whether the vector was the right one and whether a refusal said when to retry.

- `closed_loop`: C clients, each sending its next request when the last came back;
- `open_loop`: Poisson arrivals at a rate, each request its own task (none waits for another),
  with a side task (fault injection, sampling) alongside.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from ..core.input_rules import KINDS
from .stats import percentile

Send = Callable[[int, str, float], Awaitable[None]]

SAME_VECTOR = 0.99999  # cosine of an answer to the vector expected for its text: below, the answer is wrong
REFUSALS = (429, 503)  # overload and upstream-down answers: allowed under faults, never lost
ANSWERED = (200, *REFUSALS, 499)  # 499: the client went away first


@dataclass
class Outcome:
    sent: float  # seconds since the phase start
    latency: float
    status: int | str  # HTTP status, or the exception's name (a lost request)
    wrong: bool = False
    retry_after: bool = False


@dataclass
class Recorder:
    """The outcomes of one phase; answers are checked against `expected` vectors."""

    expected: dict  # (text index, kind) -> unit vector
    outcomes: list[Outcome] = field(default_factory=list)

    def is_wrong(self, index: int, kind: str, vector: np.ndarray) -> bool:
        """A vector for another text (or none close to this text's) is wrong, not slow."""
        return float(vector @ self.expected[(index, kind)]) < SAME_VECTOR

    def summary(self, start: float = 0.0, end: float = float("inf")) -> dict:
        """Counts and p50/p99 of the correct answers among requests sent in [start, end)."""
        rows = [o for o in self.outcomes if start <= o.sent < end]
        ok = [o.latency for o in rows if o.status == 200 and not o.wrong]
        counts: dict = {}
        for o in rows:
            counts[str(o.status)] = counts.get(str(o.status), 0) + 1
        refused = [o for o in rows if o.status in REFUSALS]
        return {
            "requests": len(rows), "ok": len(ok), "status_counts": counts,
            "wrong_vectors": sum(o.wrong for o in rows),
            "refused_429_503": len(refused), "refused_without_retry_after": sum(not o.retry_after for o in refused),
            "lost": sum(1 for o in rows if not isinstance(o.status, int) or o.status not in ANSWERED),
            "p50_ms": round(1000 * percentile(ok, 50), 1) if ok else None,
            "p99_ms": round(1000 * percentile(ok, 99), 1) if ok else None,
        }

    def first_ok_after(self, moment: float) -> float | None:
        """Seconds from `moment` (phase time) to the first correct answer that came back after it."""
        times = sorted(o.sent + o.latency for o in self.outcomes if o.status == 200 and o.sent + o.latency >= moment)
        return round(times[0] - moment, 2) if times else None


async def closed_loop(send: Send, clients: int, seconds: float, n_texts: int, *, seed: int = 1) -> float:
    """`clients` workers back to back for `seconds` (a request in flight at the end finishes);
    returns the phase start."""
    t0 = time.perf_counter()
    rng = random.Random(seed)

    async def worker():
        while time.perf_counter() - t0 < seconds:
            await send(rng.randrange(n_texts), rng.choice(KINDS), t0)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return t0


async def open_loop(send: Send, rate: float, seconds: float, n_texts: int,
                    during: Callable[[float], Awaitable[None]] | None = None, *, seed: int = 2) -> None:
    """Poisson arrivals at `rate`/s for `seconds`, each request its own task; `during(t0)` runs
    alongside (fault injection, sampling) and is awaited too."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    tasks, next_at = [], 0.0
    side = asyncio.create_task(during(t0)) if during else None
    while next_at < seconds:
        delay = t0 + next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(rng.randrange(n_texts), rng.choice(KINDS), t0)))
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    if side:
        await side


async def measure_saturation(send_to: Callable[[Recorder], Send], expected: dict, clients: int, seconds: float,
                     n_texts: int) -> dict:
    """A closed loop of `clients` for `seconds`, recorded afresh: its summary plus `rps`, the
    correct answers per second."""
    recorder = Recorder(expected)
    await closed_loop(send_to(recorder), clients, seconds, n_texts)
    summary = recorder.summary()
    summary["rps"] = round(summary["ok"] / seconds, 2)
    return summary
