"""Side-by-side throughput: variants are timed round-robin in one run, so the machine's
noise hits them alike and the ratios mean something."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from ..embedders.base import Embedder


@dataclass
class Throughput:
    name: str
    texts_per_s: float
    seconds: float
    texts: int


def round_robin_throughput(
    embedders: Sequence[Embedder], texts: Sequence[str], kind: str, *, batch_size: int = 16, rounds: int = 3,
    settle: float = 1.5,
) -> list[Throughput]:
    """Each embedder encodes `texts` once to warm up, then `rounds` times interleaved with the
    others; the best round counts (the least disturbed by other load). `settle` idle seconds
    precede each timing: a vLLM engine keeps polling for about a second after a request, and
    in-process torch measured right after it ran ~70x slower on 2 cores."""
    for embedder in embedders:
        embedder.encode(texts[: batch_size], kind, batch_size=batch_size)
    best = [float("inf")] * len(embedders)
    for _ in range(rounds):
        for i, embedder in enumerate(embedders):
            time.sleep(settle)
            start = time.perf_counter()
            embedder.encode(texts, kind, batch_size=batch_size)
            best[i] = min(best[i], time.perf_counter() - start)
    return [Throughput(e.name, len(texts) / s, s, len(texts)) for e, s in zip(embedders, best)]
