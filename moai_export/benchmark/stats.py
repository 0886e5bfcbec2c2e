"""Latency percentiles and rates of one measured run (pure functions of its samples)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Sample:
    """One request. Times in seconds from any monotonic clock."""

    start: float  # when the request was sent
    end: float  # when its answer (or error) came back
    texts: int
    tokens: int  # real (unpadded) tokens, counted with the target's tokenizer
    error: str | None = None
    scheduled: float | None = None  # open loop: when it was due (its latency counts from here)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency(self) -> float:
        """Open loop counts from the due time, so time spent queued behind a saturated target
        shows up (no coordinated omission)."""
        return self.end - (self.scheduled if self.scheduled is not None else self.start)

    @property
    def service(self) -> float:
        return self.end - self.start


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default): p50 of [1, 2, 3, 4] is 2.5."""
    if len(values) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def latency_summary(latencies_s: Sequence[float]) -> dict:
    """Milliseconds: p50/p90/p95/p99, max and mean."""
    ms = [v * 1000.0 for v in latencies_s]
    out = {f"p{q}": percentile(ms, q) for q in PERCENTILES}
    out["max"] = max(ms) if ms else float("nan")
    out["mean"] = float(np.mean(ms)) if ms else float("nan")
    return out


def summarize(samples: Sequence[Sample], started: float, finished: float | None = None) -> dict:
    """Rates over the measured window [started, finished] (default: the last answer).

    Only successful requests count towards sentences/s and tokens/s; failed ones are counted
    as errors and excluded from the latency percentiles.
    """
    ok = [s for s in samples if s.ok]
    end = finished if finished is not None else max((s.end for s in samples), default=started)
    seconds = max(end - started, 0.0)
    texts = sum(s.texts for s in ok)
    tokens = sum(s.tokens for s in ok)

    def rate(x: float) -> float:
        return x / seconds if seconds > 0 else float("nan")

    out = {
        "requests": len(ok),
        "errors": len(samples) - len(ok),
        "texts": texts,
        "tokens": tokens,
        "seconds": seconds,
        "requests_per_s": rate(len(ok)),
        "sentences_per_s": rate(texts),
        "tokens_per_s": rate(tokens),
        "latency_ms": latency_summary([s.latency for s in ok]),
    }
    if any(s.scheduled is not None for s in samples):
        out["service_ms"] = latency_summary([s.service for s in ok])
    return out
