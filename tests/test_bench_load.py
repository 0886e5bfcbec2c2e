"""Percentiles, rates and the load generators, with a deterministic target: an Embedder that
takes a known time per request on a clock that only it moves (a test double for the timing
arithmetic; no real component is replaced)."""

from __future__ import annotations

import _thread
import threading
import time

import numpy as np
import pytest

from moai_export.benchmark.load import Bounds, RequestStream, closed_loop, open_loop
from moai_export.benchmark.stats import Sample, latency_summary, percentile, summarize
from moai_export.benchmark.targets import Target
from moai_export.benchmark.throughput import ThroughputSettings, run_throughput, time_side_by_side
from moai_export.benchmark.workloads import Workload
from moai_export.core.contract import EmbeddingContract
from moai_export.core.errors import MoaiError
from moai_export.embedders.base import TextEmbedder


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.lock = threading.Lock()

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.t += seconds


CONTRACT = EmbeddingContract(pooling="mean", normalize=True, dims=4, max_tokens=32, padding_side="right",
                             pad_token="[PAD]", pad_token_id=0, end_token=None, end_token_id=None)


class ScriptedEmbedder(TextEmbedder):
    """Request n takes latencies[n % len] seconds of the fake clock; every `fail_every`-th fails;
    `interrupt_at` sends Ctrl-C to the main thread from inside that request."""

    def __init__(self, clock, latencies, *, fail_every=None, interrupt_at=None):
        super().__init__(CONTRACT)
        self.clock, self.latencies = clock, latencies
        self.fail_every, self.interrupt_at = fail_every, interrupt_at
        self.calls = 0
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def _embed_texts(self, texts, kind, batch_size):
        with self.lock:
            n = self.calls
            self.calls += 1
            self.seen += texts
        self.clock.advance(self.latencies[n % len(self.latencies)])
        if self.interrupt_at is not None and n == self.interrupt_at:
            _thread.interrupt_main()
            time.sleep(0.3)  # real time: the main thread takes the Ctrl-C while this request is in flight
        if self.fail_every and (n + 1) % self.fail_every == 0:
            raise RuntimeError("backend unavailable\nsecond line")
        return np.ones((len(texts), 4), np.float32)


TEXTS = [f"t{i}" for i in range(10)]
TOKENS = [3, 5, 7, 9, 11, 13, 15, 17, 19, 21]


def encode_of(embedder):
    return lambda texts: embedder.encode(texts, "document", batch_size=len(texts))


def test_percentile_is_linear_interpolation():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 90) == pytest.approx(3.7)
    assert percentile([10], 99) == 10
    assert np.isnan(percentile([], 50))
    s = latency_summary([0.010, 0.020, 0.030, 0.040])
    assert s == pytest.approx({"p50": 25.0, "p90": 37.0, "p95": 38.5, "p99": 39.7, "max": 40.0, "mean": 25.0})


def test_summary_rates_over_the_window_and_errors_excluded():
    samples = [Sample(0.0, 0.5, texts=4, tokens=40), Sample(0.5, 1.0, texts=4, tokens=60),
               Sample(1.0, 2.0, texts=4, tokens=50, error="RuntimeError: x")]
    out = summarize(samples, started=0.0)
    assert out["seconds"] == 2.0
    assert (out["requests"], out["errors"], out["texts"], out["tokens"]) == (2, 1, 8, 100)
    assert out["requests_per_s"] == 1.0 and out["sentences_per_s"] == 4.0 and out["tokens_per_s"] == 50.0
    assert out["latency_ms"]["max"] == 500.0  # the failed 1 s request is not a latency


def test_open_loop_latency_counts_from_the_due_time():
    # due at 1.0, started at 1.5 (queued), done at 1.7: latency 0.7 s, service 0.2 s
    out = summarize([Sample(1.5, 1.7, 1, 1, scheduled=1.0)], started=0.0)
    assert out["latency_ms"]["p50"] == pytest.approx(700.0)
    assert out["service_ms"]["p50"] == pytest.approx(200.0)


def test_request_stream_wraps_and_counts_real_tokens():
    stream = RequestStream(TEXTS, TOKENS, batch_size=4)
    assert stream[0] == (["t0", "t1", "t2", "t3"], 3 + 5 + 7 + 9)
    assert stream[2] == (["t8", "t9", "t0", "t1"], 19 + 21 + 3 + 5)  # wraps, stays full size
    with pytest.raises(MoaiError):
        RequestStream([], [], 1)


def test_closed_loop_with_known_latencies():
    clock = FakeClock()
    target = ScriptedEmbedder(clock, [0.010, 0.020, 0.030, 0.040])
    run = closed_loop(encode_of(target), RequestStream(TEXTS, TOKENS, 2), 1, Bounds(requests=4), clock=clock)
    out = summarize(run.samples, run.started, run.finished)
    assert out["requests"] == 4 and out["errors"] == 0
    assert out["seconds"] == pytest.approx(0.100)
    assert out["requests_per_s"] == pytest.approx(40.0)
    assert out["sentences_per_s"] == pytest.approx(80.0)
    assert out["tokens_per_s"] == pytest.approx(sum(TOKENS[:8]) / 0.1)
    assert out["latency_ms"] == pytest.approx({"p50": 25.0, "p90": 37.0, "p95": 38.5, "p99": 39.7,
                                              "max": 40.0, "mean": 25.0})


def test_closed_loop_bounded_by_seconds():
    clock = FakeClock()
    target = ScriptedEmbedder(clock, [0.1])
    run = closed_loop(encode_of(target), RequestStream(TEXTS, TOKENS, 1), 1, Bounds(seconds=0.35), clock=clock)
    # sent at 0.0, 0.1, 0.2, 0.3 (< 0.35); the last finishes at 0.4 and still counts
    assert len(run.samples) == 4
    assert summarize(run.samples, run.started, run.finished)["seconds"] == pytest.approx(0.4)


def test_closed_loop_counts_errors_and_keeps_first_messages():
    clock = FakeClock()
    target = ScriptedEmbedder(clock, [0.01], fail_every=3)
    run = closed_loop(encode_of(target), RequestStream(TEXTS, TOKENS, 1), 1, Bounds(requests=6), clock=clock)
    out = summarize(run.samples, run.started, run.finished)
    assert (out["requests"], out["errors"]) == (4, 2)
    assert run.error_messages == ["RuntimeError: backend unavailable"]


def test_concurrent_clients_serve_every_request_once():
    clock = FakeClock()
    target = ScriptedEmbedder(clock, [0.001])
    run = closed_loop(encode_of(target), RequestStream(TEXTS, TOKENS, 1), 4, Bounds(requests=40), clock=clock)
    assert len(run.samples) == 40 and target.calls == 40
    assert sorted(target.seen) == sorted(TEXTS * 4)  # request i is text i % 10


def test_open_loop_schedule_and_bounds():
    clock = FakeClock()
    target = ScriptedEmbedder(clock, [0.0])
    run = open_loop(encode_of(target), RequestStream(TEXTS, TOKENS, 1), 10.0, Bounds(seconds=1.0), clock=clock)
    due = sorted(s.scheduled for s in run.samples)
    assert len(due) == 10  # due at 0.0, 0.1, ..., 0.9
    assert np.diff(due) == pytest.approx([0.1] * 9)
    assert all(s.latency >= 0 for s in run.samples)
    poisson = open_loop(encode_of(target), RequestStream(TEXTS, TOKENS, 1), 10.0, Bounds(requests=25),
                        arrival="poisson", seed=1, clock=FakeClock())
    assert len(poisson.samples) == 25
    with pytest.raises(MoaiError):
        open_loop(encode_of(target), RequestStream(TEXTS, TOKENS, 1), 0, Bounds(requests=1))
    with pytest.raises(MoaiError):
        Bounds()


def test_ctrl_c_keeps_what_was_measured():
    clock = FakeClock()
    target = ScriptedEmbedder(clock, [0.01], interrupt_at=2)
    run = closed_loop(encode_of(target), RequestStream(TEXTS, TOKENS, 1), 1, Bounds(requests=100), clock=clock)
    assert run.interrupted
    assert len(run.samples) == 3  # the interrupted request finishes and counts


def test_throughput_grid_side_by_side_with_ratios():
    """Two deterministic targets, one twice as slow: ratios to the first target come out exact
    and cells interleave the targets."""
    clock = FakeClock()
    fast, slow = ScriptedEmbedder(clock, [0.01]), ScriptedEmbedder(clock, [0.02])
    targets = [Target("fast", "fast", fast, None, "", 0.0), Target("slow", "slow", slow, None, "", 0.0)]
    workload = Workload("w", "document", TEXTS, "ten texts")
    settings = ThroughputSettings(batch_sizes=[1, 2], concurrency=[1], requests=5, seconds=None, warmup=1)
    rows: list[dict] = []
    run_throughput(targets, [workload], settings, rows, progress=False, clock=clock)
    assert [(r["batch_size"], r["target"]) for r in rows] == [(1, "fast"), (1, "slow"), (2, "fast"), (2, "slow")]
    for r in rows:
        assert r["requests"] == 5 and r["errors"] == 0
        expected = 1.0 if r["target"] == "fast" else 0.5
        assert r["sentences_per_s_ratio"] == pytest.approx(expected)
        assert r["p50_ratio"] == pytest.approx(1 / expected)
    assert fast.calls == 1 + 2 * (1 + 5)  # first-call warm-up, then per cell 1 warm-up + 5 measured


def test_rounds_interleave_the_targets_and_keep_each_ones_fastest_run():
    """Three rounds of one cell: targets alternate round by round, only the first round warms
    up, and each target's fastest round is its row (the first target's second round here)."""
    clock, order = FakeClock(), []

    class Logged(ScriptedEmbedder):
        def _embed_texts(self, texts, kind, batch_size):
            order.append(self.label)
            return super()._embed_texts(texts, kind, batch_size)

    # calls: first-call setup, warm-up, then 2 measured requests per round
    first = Logged(clock, [0.01, 0.01, 0.04, 0.04, 0.01, 0.01, 0.02, 0.02])
    second = Logged(clock, [0.02])
    first.label, second.label = "a", "b"
    targets = [Target("a", "a", first, None, "", 0.0), Target("b", "b", second, None, "", 0.0)]
    settings = ThroughputSettings(batch_sizes=[1], concurrency=[1], requests=2, seconds=None, warmup=1, rounds=3)
    rows: list[dict] = []
    run_throughput(targets, [Workload("w", "document", TEXTS, "ten texts")], settings, rows, progress=False,
                   clock=clock)
    # first-call setup, round 1 with warm-up, rounds 2 and 3 without
    assert order == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a", "a", "b", "b"] * 2
    assert [r["target"] for r in rows] == ["a", "b"]
    assert rows[0]["sentences_per_s"] == pytest.approx(100.0)  # round 2: 2 texts in 0.02 s
    assert rows[1]["sentences_per_s"] == pytest.approx(50.0)
    assert rows[1]["sentences_per_s_ratio"] == pytest.approx(0.5)
    assert first.calls == 1 + 1 + 3 * 2


@pytest.mark.parametrize("fail_every, failure", [(2, "warm-up: RuntimeError"), (4, "RuntimeError")])
def test_side_by_side_timing_gives_a_row_per_embedder_and_names_a_failing_one(fail_every, failure):
    """A failure in any round fails the timing, even when a later round of that embedder is clean
    (call 1 is the warm-up, call 3 the second round)."""
    clock = FakeClock()
    rows = time_side_by_side([ScriptedEmbedder(clock, [0.0]), ScriptedEmbedder(clock, [0.0])], TEXTS, "document",
                             batch_size=4, rounds=2, settle=0)
    assert len(rows) == 2 and rows[0]["sentences_per_s_ratio"] == 1.0
    assert all(r["requests"] == 3 and r["errors"] == 0 for r in rows)  # ceil(10 / 4): one pass over the texts
    failing = ScriptedEmbedder(clock, [0.0], fail_every=fail_every)
    failing.name = "broken"
    with pytest.raises(MoaiError, match=f"broken: timing failed: {failure}: backend unavailable"):
        time_side_by_side([ScriptedEmbedder(clock, [0.0]), failing], TEXTS, "document", settle=0)
