"""The throughput timer of `moai-bench throughput` and the demo's speed table: every target
through the same grid, side by side.

Cells run in the order workload -> batch size -> load level -> round -> target, so all targets
of one cell are measured minutes apart under the same machine noise, and ratios to the first
target are taken within a cell. With several rounds each target's fastest run of a cell counts
(the one least disturbed by other load).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from tqdm import tqdm

from ..core.errors import MoaiError
from ..embedders.base import Embedder
from .load import Bounds, Clock, RequestStream, closed_loop, open_loop, warm_up
from .stats import summarize
from .targets import Target
from .workloads import Workload, length_stats

CELL_KEYS = ("workload", "batch_size", "mode", "level")


@dataclass
class ThroughputSettings:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])  # texts per request
    concurrency: list[int] = field(default_factory=lambda: [1])  # closed-loop client counts (empty: no closed loop)
    rates: list[float] = field(default_factory=list)  # open-loop requests/s (empty: no open loop)
    requests: int | None = 50
    seconds: float | None = 20.0
    warmup: int = 1  # untimed requests per cell and target
    max_inflight: int = 64
    arrival: str = "uniform"
    settle: float = 1.0  # idle seconds before each target's cell (see the --settle help)
    seed: int = 0
    rounds: int = 1  # runs of each cell, targets interleaved; each target's fastest run counts

    def to_dict(self) -> dict:
        return asdict(self)


def _cells(settings: ThroughputSettings) -> list[tuple[str, float]]:
    return [("closed", c) for c in settings.concurrency] + [("open", r) for r in settings.rates]


def run_throughput(targets: Sequence[Target], workloads: Sequence[Workload], settings: ThroughputSettings,
                   rows: list[dict], *, progress: bool = True, log: Callable[[str], None] = lambda m: None,
                   clock: Clock | None = None) -> None:
    """Append one row per (workload, batch size, level, target) to `rows` as it completes (a
    later round replaces it when faster), so an interrupted run keeps every finished cell.
    Raises KeyboardInterrupt after a Ctrl-C."""
    bounds = Bounds(settings.requests, settings.seconds)
    for target in targets:  # first-call setup (allocators, lazy init) is not anyone's cell
        first = workloads[0]
        target.encode_fn(first.kind)(first.texts[:1])
    total = len(workloads) * len(settings.batch_sizes) * len(_cells(settings)) * settings.rounds * len(targets)
    with tqdm(total=total, desc="cells", unit="cell", disable=not progress, position=0) as cells_bar:
        for workload in workloads:
            tokens = {t.label: t.count_tokens(workload.texts, workload.kind) for t in targets}
            workload.stats["tokens_per_text"] = {label: length_stats(n) for label, n in tokens.items()}
            for batch_size in settings.batch_sizes:
                for mode, level in _cells(settings):
                    kept: dict[int, int] = {}  # target's position -> index in rows of its fastest run of this cell
                    for round_number in range(settings.rounds):
                        warmup = settings.warmup if round_number == 0 else 0  # later rounds repeat a warm cell
                        for position, target in enumerate(targets):
                            cells_bar.set_postfix_str(f"{workload.name} b{batch_size} {mode} {level:g} {target.label}")
                            stream = RequestStream(workload.texts, tokens[target.label], batch_size)
                            if clock is None and settings.settle:
                                time.sleep(settings.settle)
                            row = _measure(target, workload, stream, mode, level, bounds, settings, warmup,
                                           progress, clock)
                            _keep_fastest(rows, kept, position, row)
                            cells_bar.update()
                            if row.get("interrupted"):
                                raise KeyboardInterrupt
    add_ratios(rows)


def _keep_fastest(rows: list[dict], kept: dict[int, int], target: int, row: dict) -> None:
    """Append a target's first run of a cell; a later round replaces it when it served more
    sentences/s. A run with errors replaces a clean one and is never replaced, so the report
    shows them; an interrupted round replaces nothing (the run stops there)."""
    if target not in kept:
        kept[target] = len(rows)
        rows.append(row)
        return
    best = rows[kept[target]]
    if row.get("interrupted") or best.get("errors"):
        return
    if row.get("errors") or _rate(row) > _rate(best):
        rows[kept[target]] = row


def _rate(row: dict) -> float:
    rate = row.get("sentences_per_s")
    return rate if rate is not None and rate == rate else -1.0  # a failed or empty run ranks last


def _measure(target: Target, workload: Workload, stream: RequestStream, mode: str, level: float, bounds: Bounds,
             settings: ThroughputSettings, warmup: int, progress: bool, clock: Clock | None) -> dict:
    row = {"workload": workload.name, "kind": workload.kind, "batch_size": stream.batch_size, "mode": mode,
           "level": level, "target": target.label}
    encode = target.encode_fn(workload.kind)
    try:
        warm_up(encode, stream, warmup)
    except KeyboardInterrupt:
        return {**row, "interrupted": True, "skipped": "interrupted during warm-up"}
    except Exception as exc:  # a target that cannot serve at all is a row with its error, not a crash
        return {**row, "requests": 0, "errors": 1, "error_messages": [f"warm-up: {type(exc).__name__}: {exc}"]}
    lock = threading.Lock()
    with tqdm(total=bounds.requests, desc=f"  {target.label}", unit="req", leave=False, disable=not progress,
              position=1) as bar:
        def on_sample(_sample) -> None:
            with lock:
                bar.update()

        if mode == "closed":
            run = closed_loop(encode, stream, int(level), bounds, clock=clock, on_sample=on_sample)
        else:
            run = open_loop(encode, stream, level, bounds, max_inflight=settings.max_inflight,
                            arrival=settings.arrival, seed=settings.seed, clock=clock, on_sample=on_sample)
    row.update(summarize(run.samples, run.started, run.finished))
    row["error_messages"] = run.error_messages
    if run.interrupted:
        row["interrupted"] = True
    return row


def cell_key(row: dict) -> tuple:
    return tuple(row[k] for k in CELL_KEYS)


def add_ratios(rows: list[dict]) -> None:
    """Each row's sentences/s, tokens/s and p50 latency as a ratio to the first target's row
    of the same cell (what the tables and the headline compare)."""
    reference: dict[tuple, dict] = {}
    for row in rows:
        reference.setdefault(cell_key(row), row)
    for row in rows:
        ref = reference[cell_key(row)]
        for metric in ("sentences_per_s", "tokens_per_s"):
            row[f"{metric}_ratio"] = _ratio(row.get(metric), ref.get(metric))
        row["p50_ratio"] = _ratio((row.get("latency_ms") or {}).get("p50"), (ref.get("latency_ms") or {}).get("p50"))
        row["reference"] = ref["target"]


def _ratio(value, reference) -> float | None:
    if not value or not reference or value != value or reference != reference:  # missing, zero or NaN
        return None
    return value / reference


def time_side_by_side(embedders: Sequence[Embedder], texts: Sequence[str], kind: str, *, batch_size: int = 16,
                      rounds: int = 3, settle: float = 1.5) -> list[dict]:
    """The demo's speed table: each embedder encodes `texts` once per round (one client,
    `batch_size` texts a request), the embedders interleaved round by round, and its fastest
    round counts. One row per embedder, in order, with `sentences_per_s` and its ratio to the
    first. `settle` is longer than the command's default: the demo times in-process models
    right after a vLLM server."""
    targets = [Target.in_hand(embedder) for embedder in embedders]
    workload = Workload("texts", kind, list(texts), f"{len(texts)} texts ({kind})")
    one_pass = math.ceil(len(texts) / batch_size)
    settings = ThroughputSettings(batch_sizes=[batch_size], concurrency=[1], requests=one_pass, seconds=None,
                                  warmup=1, settle=settle, rounds=rounds)
    rows: list[dict] = []
    run_throughput(targets, [workload], settings, rows, progress=False)
    for row in rows:
        if row.get("errors") or "sentences_per_s" not in row:
            raise MoaiError(f"{row['target']}: timing failed: {'; '.join(row.get('error_messages', []))}")
    return rows
