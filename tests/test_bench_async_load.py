"""The asyncio load generators and outcome recording the gateway benchmarks share
(benchmark/async_load.py, benchmark/gateway_bench.py): real event loops and short real time;
the servers are replaced by objects that answer like aiohttp / tritonclient, so each check of
an answer (status, Retry-After, the vector) is exercised without starting one."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time

import numpy as np
import pytest

from moai_export.benchmark.async_load import Outcome, Recorder, closed_loop, measure_saturation, open_loop
from moai_export.benchmark.gateway_bench import TRITON_DIRECT, Senders, texts_pool
from moai_export.benchmark.process_memory import rss_mb

UNIT = {(0, "query"): np.array([1.0, 0.0], np.float32), (1, "query"): np.array([0.0, 1.0], np.float32)}


def test_summary_counts_statuses_refusals_and_lost_requests():
    recorder = Recorder(UNIT, [
        Outcome(0.0, 0.010, 200), Outcome(0.1, 0.020, 200), Outcome(0.2, 0.030, 200),
        Outcome(0.3, 0.500, 200, wrong=True),  # a wrong vector is not a latency
        Outcome(0.4, 0.001, 503, retry_after=True), Outcome(0.5, 0.001, 429),
        Outcome(0.6, 0.001, 499), Outcome(0.7, 1.0, "ClientConnectorError"), Outcome(0.8, 0.001, 500),
    ])
    out = recorder.summary()
    assert (out["requests"], out["ok"], out["wrong_vectors"]) == (9, 3, 1)
    assert out["status_counts"] == {"200": 4, "503": 1, "429": 1, "499": 1, "ClientConnectorError": 1, "500": 1}
    assert (out["refused_429_503"], out["refused_without_retry_after"]) == (2, 1)
    assert out["lost"] == 2  # the exception and the 500; 499 (client gone) and refusals are answers
    assert (out["p50_ms"], out["p99_ms"]) == (20.0, 29.8)
    window = recorder.summary(0.1, 0.3)  # [start, end) by send time
    assert (window["requests"], window["ok"]) == (2, 2)
    assert Recorder(UNIT).summary()["p50_ms"] is None


def test_first_ok_after_a_moment_counts_from_the_answer_not_the_send():
    recorder = Recorder(UNIT, [Outcome(1.0, 3.0, 200), Outcome(2.0, 0.5, 503), Outcome(2.5, 0.2, 200),
                               Outcome(3.0, 0.1, 200, wrong=False)])
    assert recorder.first_ok_after(2.0) == 0.7  # the one sent at 2.5 came back at 2.7
    assert recorder.first_ok_after(10.0) is None


def test_wrong_vector_is_one_for_another_text():
    recorder = Recorder(UNIT)
    assert not recorder.is_wrong(0, "query", np.array([1.0, 0.0]))
    assert recorder.is_wrong(0, "query", np.array([0.0, 1.0]))
    assert recorder.is_wrong(1, "query", np.array([0.141, 0.99]))  # close (cosine 0.99) is not the same


def test_closed_loop_keeps_each_client_sequential_and_stops_sending_at_the_end():
    in_flight, peak, sent = [0], [0], []

    async def send(index, kind, t0):
        sent.append((time.perf_counter() - t0, index, kind))
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.01)
        in_flight[0] -= 1

    asyncio.run(closed_loop(send, 3, 0.2, n_texts=5))
    assert peak[0] == 3  # three clients, each waits for its answer before the next request
    assert 3 * 10 <= len(sent) <= 3 * 21
    assert all(at < 0.2 for at, _, _ in sent)
    assert {i for _, i, _ in sent} <= set(range(5)) and {k for _, _, k in sent} == {"query", "document"}


def test_open_loop_sends_on_a_poisson_schedule_without_waiting_for_answers():
    started, in_flight, peak, side = [], [0], [0], []

    async def send(index, kind, t0):
        started.append(time.perf_counter() - t0)
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        await asyncio.sleep(0.05)  # five arrivals' worth at 100/s: they must overlap
        in_flight[0] -= 1

    async def during(t0):  # outlasts the arrivals: open_loop must still wait for it
        await asyncio.sleep(0.5)
        side.append("ran")

    asyncio.run(open_loop(send, 100.0, 0.3, n_texts=5, during=during, seed=7))
    rng, due, at = random.Random(7), [], 0.0
    while at < 0.3:  # the schedule the generator must follow: same seed, same draws per request
        due.append(at)
        rng.randrange(5), rng.choice(("query", "document"))
        at += rng.expovariate(100.0)
    assert len(started) == len(due)
    assert np.allclose(started, due, atol=0.03)
    assert peak[0] > 1 and side == ["ran"]


def test_saturation_counts_correct_answers_per_second():
    def send_to(recorder):
        async def send(index, kind, t0):
            await asyncio.sleep(0.01)
            recorder.outcomes.append(Outcome(time.perf_counter() - t0, 0.01, 200, wrong=index % 2 == 1))
        return send

    summary = asyncio.run(measure_saturation(send_to, UNIT, 2, 0.2, n_texts=4))
    assert summary["rps"] == round(summary["ok"] / 0.2, 2)
    assert 0 < summary["ok"] < summary["requests"] and summary["wrong_vectors"] == summary["requests"] - summary["ok"]


class FakeResponse:
    def __init__(self, status, body=b"", headers=None):
        self.status, self.body, self.headers = status, body, headers or {}

    async def read(self):
        return self.body

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


class FakeSession:
    """aiohttp.ClientSession.post as the gateway would answer: each call pops the next answer."""

    def __init__(self, answers):
        self.answers, self.posts = list(answers), []

    def post(self, url, json, timeout):
        self.posts.append((url, json))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def embedding_body(vector):
    data = base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()
    return json.dumps({"data": [{"embedding": data}]}).encode()


def test_gateway_requests_are_checked_and_failures_recorded():
    session = FakeSession([FakeResponse(200, embedding_body([1, 0])), FakeResponse(200, embedding_body([0, 1])),
                           FakeResponse(503, headers={"Retry-After": "1"}), ConnectionResetError("gone")])
    recorder = Recorder(UNIT)
    send = Senders("m", ["a", "b"], session, None, {"gateway": "http://gw"})("gateway", recorder)

    async def four():
        for _ in range(4):
            await send(0, "query", time.perf_counter())

    asyncio.run(four())
    assert session.posts[0] == ("http://gw/v1/embeddings", {"model": "m", "input": ["a"], "input_type": "query",
                                                            "encoding_format": "base64"})
    assert [(o.status, o.wrong, o.retry_after) for o in recorder.outcomes] == [
        (200, False, False), (200, True, False), (503, False, True), ("ConnectionResetError", False, False)]


class FakeTriton:
    """tritonclient.grpc.aio's infer: the ensemble's EMBEDDING for the TEXT it was sent."""

    def __init__(self, vectors):
        self.vectors, self.texts = vectors, []

    async def infer(self, model, inputs, client_timeout):
        self.texts.append((model, inputs[0].name(), inputs[1].name(), inputs[0].shape()))
        vector = self.vectors.pop(0)
        if isinstance(vector, Exception):
            raise vector

        class Result:
            def as_numpy(self, name):
                assert name == "EMBEDDING"
                return np.asarray([vector], np.float32)
        return Result()


def test_triton_requests_send_the_ensemble_inputs_and_are_checked():
    triton = FakeTriton([[0, 1], [1, 0], TimeoutError()])
    recorder = Recorder(UNIT)
    send = Senders("ens", ["a", "b"], None, triton, {})(TRITON_DIRECT, recorder)

    async def three():
        for index in (1, 1, 0):
            await send(index, "query", time.perf_counter())

    asyncio.run(three())
    assert triton.texts == [("ens", "TEXT", "KIND", [1, 1])] * 3
    assert [(o.status, o.wrong) for o in recorder.outcomes] == [(200, False), (200, True), ("TimeoutError", False)]


def test_texts_pool_is_reproducible_and_every_text_differs():
    pool = texts_pool(50)
    assert pool == texts_pool(50) and len(set(pool)) == 50 and pool[3].startswith("3: ")


def test_rss_of_this_process_and_a_gone_one():
    mine = rss_mb([os.getpid()])
    assert 10 < mine < 100_000
    assert rss_mb([os.getpid(), os.getpid()]) == pytest.approx(2 * mine, rel=0.1)  # summed over processes
    assert rss_mb([os.getpid(), 2 ** 22 + 12345]) == pytest.approx(mine, rel=0.1)  # a gone one counts 0
    assert rss_mb([]) == 0
