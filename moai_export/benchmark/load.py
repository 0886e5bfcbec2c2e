"""Load generators: closed-loop clients (each sends its next request when the last one came
back) and an open loop (requests sent on a schedule at a target rate, whether or not earlier
ones have come back: the way to find the rate where latency takes off).

Both are bounded by a request count and/or seconds, take an `encode(texts)` callable (so they
know nothing about targets), and stop cleanly on Ctrl-C with what they have measured.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..core.errors import MoaiError
from .stats import Sample

MAX_ERROR_MESSAGES = 5


class Clock:
    """Real time; tests pass a clock whose time only moves when a fake target says so."""

    def now(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass
class Bounds:
    requests: int | None = None  # measured requests per run (warm-up not included)
    seconds: float | None = None  # wall seconds per run; in-flight requests still finish

    def __post_init__(self) -> None:
        if self.requests is None and self.seconds is None:
            raise MoaiError("bound each run by requests or seconds (or both)")


class RequestStream:
    """Request i is `batch_size` texts taken in order, wrapping around the workload, so a run
    of any length sees every text and every request is the same size."""

    def __init__(self, texts: Sequence[str], tokens: Sequence[int], batch_size: int):
        if not texts:
            raise MoaiError("the workload has no texts")
        if len(tokens) != len(texts):
            raise ValueError("one token count per text")
        self.texts, self.tokens, self.batch_size = list(texts), list(tokens), batch_size

    def __getitem__(self, i: int) -> tuple[list[str], int]:
        n = len(self.texts)
        index = [(i * self.batch_size + j) % n for j in range(self.batch_size)]
        return [self.texts[k] for k in index], sum(self.tokens[k] for k in index)


@dataclass
class RunResult:
    mode: str  # closed | open
    level: float  # concurrency (closed) or offered requests/s (open)
    samples: list[Sample]
    started: float
    finished: float
    interrupted: bool = False
    error_messages: list[str] = field(default_factory=list)


def _call(encode: Callable[[list[str]], object], texts: list[str], tokens: int, clock: Clock,
          scheduled: float | None = None) -> Sample:
    start = clock.now()
    try:
        encode(texts)
        error = None
    except Exception as exc:  # a failed request is a figure (error count), not a crash
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return Sample(start, clock.now(), len(texts), tokens, error, scheduled)


def warm_up(encode: Callable[[list[str]], object], stream: RequestStream, requests: int) -> None:
    """Untimed requests first (lazy allocations, caches, first-shape setup); errors surface here."""
    for i in range(requests):
        encode(stream[i][0])


def closed_loop(encode: Callable[[list[str]], object], stream: RequestStream, concurrency: int, bounds: Bounds,
                *, clock: Clock | None = None, on_sample: Callable[[Sample], None] | None = None) -> RunResult:
    clock = clock or Clock()
    lock = threading.Lock()
    stop = threading.Event()
    samples: list[Sample] = []
    counter = [0]
    started = clock.now()
    deadline = started + bounds.seconds if bounds.seconds is not None else None

    def next_index() -> int | None:
        with lock:
            i = counter[0]
            if stop.is_set() or (bounds.requests is not None and i >= bounds.requests) \
                    or (deadline is not None and clock.now() >= deadline):
                return None
            counter[0] += 1
            return i

    def client() -> None:
        while (i := next_index()) is not None:
            texts, tokens = stream[i]
            sample = _call(encode, texts, tokens, clock)
            with lock:
                samples.append(sample)
            if on_sample:
                on_sample(sample)

    interrupted = False
    threads = [threading.Thread(target=client, daemon=True, name=f"client-{c}") for c in range(concurrency)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.1)  # a short join keeps the main thread responsive to Ctrl-C
    except KeyboardInterrupt:
        interrupted = True
        stop.set()  # clients finish the request in hand; a second Ctrl-C abandons them
        for t in threads:
            if t.is_alive():
                t.join()
    return _result("closed", concurrency, samples, started, interrupted)


def open_loop(encode: Callable[[list[str]], object], stream: RequestStream, rate: float, bounds: Bounds, *,
              max_inflight: int = 64, arrival: str = "uniform", seed: int = 0, clock: Clock | None = None,
              on_sample: Callable[[Sample], None] | None = None) -> RunResult:
    """Requests due every 1/rate seconds (`uniform`) or at Poisson arrivals (`poisson`), served
    by up to `max_inflight` concurrent calls; latency counts from the due time."""
    if rate <= 0:
        raise MoaiError(f"request rate must be > 0, not {rate}")
    if arrival not in ("uniform", "poisson"):
        raise MoaiError(f"unknown arrival process {arrival!r}: expected uniform or poisson")
    clock = clock or Clock()
    rng = random.Random(seed)
    samples: list[Sample] = []
    lock = threading.Lock()

    def serve(i: int, due: float) -> None:
        texts, tokens = stream[i]
        sample = _call(encode, texts, tokens, clock, scheduled=due)
        with lock:
            samples.append(sample)
        if on_sample:
            on_sample(sample)

    interrupted = False
    pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="open-loop")
    started = clock.now()
    offset, i = 0.0, 0
    try:
        while bounds.requests is None or i < bounds.requests:
            if bounds.seconds is not None and offset >= bounds.seconds:
                break
            due = started + offset
            while (wait := due - clock.now()) > 0:
                clock.sleep(min(wait, 0.1))
            pool.submit(serve, i, due)
            i += 1
            # uniform: i / rate, not a running sum (ten 0.1 s steps must not add up to 0.999...)
            offset = offset + rng.expovariate(rate) if arrival == "poisson" else i / rate
        pool.shutdown(wait=True)
    except KeyboardInterrupt:
        interrupted = True
        pool.shutdown(wait=True, cancel_futures=True)
    return _result("open", rate, samples, started, interrupted)


def _result(mode: str, level: float, samples: list[Sample], started: float, interrupted: bool) -> RunResult:
    samples = sorted(samples, key=lambda s: s.start)
    finished = max((s.end for s in samples), default=started)
    errors = []
    for s in samples:
        if s.error and s.error not in errors and len(errors) < MAX_ERROR_MESSAGES:
            errors.append(s.error)
    return RunResult(mode, level, samples, started, finished, interrupted, errors)
