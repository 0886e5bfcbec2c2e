"""The OpenAI-compatible gateway (`moai-export gateway`) against a REAL tritonserver serving the
fp32 ONNX artifact, over loopback, driven by the official `openai` client and raw HTTP."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from moai_export.commands.export_cli import main
from moai_export.core.errors import MoaiError
from moai_export.embedders import load_embedder
from moai_export.gates.parity import cosine_rows
from moai_export.gates.probes import long_text
from moai_export.gateway.config import load_api_keys
from moai_export.launchers.triton_server import TritonServer, free_ports, runtime_venv

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not list(runtime_venv().glob("lib/python3*/site-packages/pytriton/tritonserver")),
    reason="Triton runtime environment missing: run serve/triton/setup_env.sh (make test does)",
)

KEYS = ("sk-first-key-0123456789", "sk-second-key-9876543210")
MODEL = "moai_embedding"
TEXTS = ["BC카드 연회비는 어떻게 되나요?", "a", "해외 결제 수수료 " * 30, long_text(1024)]


@pytest.fixture(scope="module")
def reference(example_dir):
    return load_embedder(f"peft:{example_dir / 'base'}+{example_dir / 'adapter'}")


@pytest.fixture(scope="module")
def repo(onnx_fp32_dir, tmp_path_factory):
    from moai_export.export.triton import TritonOptions, write_repository

    repo = tmp_path_factory.mktemp("gateway") / "models"
    write_repository(onnx_fp32_dir, repo, TritonOptions(max_batch_size=8, verify="none"), log=lambda m: None)
    return repo


@pytest.fixture(scope="module")
def triton(repo, tmp_path_factory):
    server = TritonServer(repo, *free_ports(3), log_path=tmp_path_factory.mktemp("gw-triton") / "server.log")
    server.start(timeout=180)
    yield server
    server.stop()


READ_TIMEOUT = 2  # the module gateway's --header-timeout and --body-timeout: slow clients wait for them


def start_gateway(triton, log: Path, *args: str, **popen) -> tuple[str, subprocess.Popen]:
    """`moai-export gateway` in its own process, once /health is 200: (base URL, process). In front
    of `triton`, or (None) of the backend `args` name (tests/test_vllm.py: --vllm)."""
    (port,) = free_ports(1)
    backend = ["--triton", f"grpc://{triton.grpc_url}", "--model", MODEL] if triton is not None else []
    process = subprocess.Popen(
        [sys.executable, "-m", "moai_export.commands.export_cli", "gateway", *backend, "--port", str(port), *args],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "MOAI_GATEWAY_API_KEYS": ",".join(KEYS), "PYTHONPATH": str(Path(__file__).parents[1])},
        **popen)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if call(url, "GET", "/health")[0] == 200:
                return url, process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the gateway was not ready in 60 s: {log.read_text()}")


@pytest.fixture(scope="module")
def gateway_process(triton, repo, tmp_path_factory):
    """The module's gateway; yields (base URL, log path, process)."""
    log = tmp_path_factory.mktemp("gw") / "gateway.log"
    url, process = start_gateway(triton, log, "--max-texts", "16", "--max-chars", "20000", "--max-body-bytes",
                                 "200000", "--timeout", "5", "--header-timeout", str(READ_TIMEOUT),
                                 "--body-timeout", str(READ_TIMEOUT))
    yield url, log, process
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 128 + signal.SIGTERM  # after a graceful stop, as the launchers exit


@pytest.fixture(scope="module")
def gateway(gateway_process):
    """(base URL, log path) of the module's gateway."""
    return gateway_process[:2]


def call(url: str, method: str, path: str, payload=None, *, key: str | None = KEYS[0], raw: bytes | None = None):
    """(status, headers, JSON body) of one request."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    request = urllib.request.Request(url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, json.loads(exc.read())


def embed(url, texts, **fields):
    status, _, body = call(url, "POST", "/v1/embeddings", {"model": MODEL, "input": texts, **fields})
    assert status == 200, body
    return np.asarray([item["embedding"] for item in body["data"]], dtype=np.float32), body


def openai_client(url, key=KEYS[1]):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_openai_client_embeds_queries_and_documents_like_the_reference(gateway, reference):
    url, _ = gateway
    client = openai_client(url)
    for kind in ("query", "document"):
        answer = client.embeddings.create(model=MODEL, input=TEXTS, extra_body={"input_type": kind})
        served = np.asarray([item.embedding for item in answer.data], dtype=np.float32)
        assert cosine_rows(served, reference.encode(TEXTS, kind)).min() >= 0.99999
    document = client.embeddings.create(model=MODEL, input=TEXTS[:2], extra_body={"input_type": "document"})
    query = client.embeddings.create(model=MODEL, input=TEXTS[:2], extra_body={"input_type": "query"})
    assert cosine_rows(np.asarray([d.embedding for d in query.data]), np.asarray([d.embedding for d in document.data])).max() < 0.999
    assert [m.id for m in client.models.list().data] == [MODEL, f"{MODEL}:query", f"{MODEL}:document"]


def test_float_and_base64_batch_and_single_agree(gateway):
    url, _ = gateway
    batch, body = embed(url, TEXTS, input_type="query", encoding_format="float")
    assert [item["index"] for item in body["data"]] == list(range(len(TEXTS))) and body["model"] == MODEL
    status, _, encoded = call(url, "POST", "/v1/embeddings", {"model": MODEL, "input": TEXTS, "input_type": "query",
                                                             "encoding_format": "base64"})
    assert status == 200, encoded
    decoded = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in encoded["data"]])
    np.testing.assert_array_equal(decoded, batch)
    for i, text in enumerate(TEXTS):
        single, _ = embed(url, text, input_type="query")  # a bare string is one input
        assert cosine_rows(single, batch[i:i + 1])[0] >= 0.99999


def test_usage_counts_contract_tokens(gateway, reference):
    """Usage is Triton's count (the ensemble's TOKENS), equal to the contract tokenizer's: prompt and
    end token included, the over-long text counted after truncation, summed over the Triton requests
    a 12-text input is split into (the model's batch size is 8)."""
    url, _ = gateway
    texts = TEXTS * 3
    for kind in ("query", "document"):
        _, body = embed(url, texts, input_type=kind)
        tokens = reference.tokenizer.encode(texts, kind)
        assert tokens.num_truncated == 3  # the count is after truncation
        expected = sum(len(ids) for ids in tokens.ids)
        assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected, "truncated_inputs": [3, 7, 11]}


def assert_truncation_is_reported_or_refused(url, strict_url, model, reference):
    """Over-length input is never silent: the cut texts are listed in usage and a header, and a
    gateway started with --truncate false refuses them naming each one, its length and max_tokens
    (the lengths as the contract counts them, prompt and end token included). For both backends."""
    long = long_text(1024)
    texts = ["short", long, "also short", long + " more"]
    status, headers, body = call(url, "POST", "/v1/embeddings", {"model": model, "input": texts, "input_type": "query"})
    assert status == 200 and body["usage"]["truncated_inputs"] == [1, 3], body.get("usage", body)
    assert headers["x-moai-truncated-inputs"] == "1,3"
    status, headers, body = call(url, "POST", "/v1/embeddings", {"model": model, "input": texts[:1], "input_type": "query"})
    assert status == 200 and body["usage"]["truncated_inputs"] == [] and "x-moai-truncated-inputs" not in headers
    status, _, body = call(strict_url, "POST", "/v1/embeddings", {"model": model, "input": texts, "input_type": "query"})
    assert status == 400 and body["error"]["code"] == "input_too_long" and body["error"]["param"] == "input", body
    for i in (1, 3):
        assert f"input[{i}] has {reference.tokenizer.count_tokens(texts[i], 'query')} tokens" in body["error"]["message"]
    assert "input[0]" not in body["error"]["message"] and "max_tokens 1024" in body["error"]["message"]
    status, _, body = call(strict_url, "POST", "/v1/embeddings", {"model": model, "input": texts[:1], "input_type": "query"})
    assert status == 200, body


def test_truncation_is_reported_or_refused(gateway, triton, reference, tmp_path):
    url, _ = gateway
    strict_url, process = start_gateway(triton, tmp_path / "strict.log", "--truncate", "false")
    try:
        assert_truncation_is_reported_or_refused(url, strict_url, MODEL, reference)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_dimensions_truncate_and_renormalize(gateway):
    url, _ = gateway
    full, _ = embed(url, TEXTS, input_type="document")
    short, _ = embed(url, TEXTS, input_type="document", dimensions=32)
    assert short.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    assert cosine_rows(short, full[:, :32]).min() >= 0.99999
    for bad in (16, 65, "32", 0):
        status, _, body = call(url, "POST", "/v1/embeddings", {"model": MODEL, "input": "x", "input_type": "query",
                                                               "dimensions": bad})
        assert status == 400 and body["error"]["param"] == "dimensions", body


def assert_openai_error(status, headers, body, expected_status, param=None):
    assert status == expected_status, body
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    if param:
        assert body["error"]["param"] == param


def test_api_keys(gateway):
    url, log = gateway
    import openai

    assert_openai_error(*call(url, "POST", "/v1/embeddings", {"model": MODEL, "input": "x"}, key=None), 401)
    assert_openai_error(*call(url, "GET", "/v1/models", key="sk-wrong"), 401)
    with pytest.raises(openai.AuthenticationError):
        openai_client(url, key="sk-first-key-0123456788").embeddings.create(model=MODEL, input="x")
    assert call(url, "GET", "/v1/models", key=KEYS[1])[0] == 200
    assert call(url, "GET", "/health", key=None)[0] == 200  # probes need no key
    assert not any(key in log.read_text() for key in KEYS)  # no key material in logs


def test_api_keys_come_from_flag_environment_and_file(tmp_path):
    (tmp_path / "keys").write_text("# team keys\nk-file-1\n\n k-file-2 \n")
    keys = load_api_keys(("k-flag",), tmp_path / "keys", environ={"MOAI_GATEWAY_API_KEYS": "k-env-1, k-env-2,"})
    assert keys == ("k-flag", "k-env-1", "k-env-2", "k-file-1", "k-file-2")
    assert load_api_keys((), None, environ={}) == ()  # no source at all: an open gateway, loopback only


def _gateway_command(monkeypatch, *args, env=None):
    """Run `moai-export gateway` up to the server's start: (exit code, output, the config it would serve)."""
    served = []
    monkeypatch.setattr("moai_export.gateway.server.serve", lambda config, log_level="info": served.append(config))
    result = CliRunner().invoke(main, ["gateway", "--triton", "grpc://127.0.0.1:1", "--model", MODEL, *args],
                                env={"MOAI_GATEWAY_API_KEYS": None, **(env or {})})
    return result.exit_code, result.output, served[0] if served else None


@pytest.mark.parametrize("args, env, words", [
    (["--api-key-file", "{tmp}/keys"], None, "--api-key-file {tmp}/keys holds no API key"),  # only comments
    (["--api-key", ""], None, "--api-key holds no API key"),
    (["--api-key", "k-real", "--api-key", " "], None, "--api-key holds no API key"),
    ([], {"MOAI_GATEWAY_API_KEYS": " , "}, "$MOAI_GATEWAY_API_KEYS holds no API key"),
    (["--host", "0.0.0.0"], None, "serve it open with --no-auth"),  # no key source: open on loopback only
    (["--host", "0.0.0.0", "--no-auth", "--api-key", "k-real"], None, "--no-auth and API keys contradict"),
])
def test_a_gateway_meant_to_be_protected_never_starts_open(monkeypatch, tmp_path, args, env, words):
    (tmp_path / "keys").write_text("# the team's keys go here\n   \n")
    code, output, served = _gateway_command(monkeypatch, *(a.replace("{tmp}", str(tmp_path)) for a in args), env=env)
    assert code == 1 and served is None, output
    assert words.replace("{tmp}", str(tmp_path)) in output


@pytest.mark.parametrize("args", [[], ["--host", "localhost"], ["--host", "::1"], ["--host", "0.0.0.0", "--no-auth"],
                                  ["--host", "0.0.0.0", "--api-key", "k-real"]])
def test_an_open_gateway_is_loopback_or_said_out_loud(monkeypatch, args):
    code, output, served = _gateway_command(monkeypatch, *args)
    assert code == 0 and served is not None, output
    assert served.api_keys == (("k-real",) if "k-real" in args else ())
    with pytest.raises(MoaiError, match="--no-auth"):
        type(served)("127.0.0.1:1", MODEL, host="10.0.0.7").validate()  # the library refuses it too


@pytest.mark.parametrize("payload, status, param", [
    ({"model": MODEL, "input": ["x"] * 17}, 400, "input"),  # texts per request
    ({"model": MODEL, "input": ["ok", "y" * 20001]}, 400, "input"),  # characters per text
    ({"model": MODEL, "input": ["ok", ""]}, 400, "input"),  # the empty-text policy
    ({"model": MODEL, "input": []}, 400, "input"),
    ({"model": MODEL, "input": [[1, 2, 3]]}, 400, "input"),  # token arrays
    ({"model": MODEL, "input": "x", "input_type": "passage"}, 400, "input_type"),
    ({"model": MODEL, "input": "x", "input_type": "query", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": MODEL, "input": "x"}, 400, "input_type"),  # the kind is never guessed
    ({"model": MODEL, "input": "x", "input_type": None}, 400, "input_type"),
    ({"model": f"{MODEL}:query", "input": "x", "input_type": "document"}, 400, "input_type"),  # contradicts the alias
    ({"input": "x"}, 400, "model"),
    ({"model": "other-model", "input": "x"}, 404, "model"),
    ({"model": f"{MODEL}:passage", "input": "x"}, 404, "model"),
])
def test_bad_requests_get_openai_errors(gateway, payload, status, param):
    url, _ = gateway
    assert_openai_error(*call(url, "POST", "/v1/embeddings", payload), status, param)


def test_body_size_json_and_routes(gateway):
    url, _ = gateway
    big = json.dumps({"model": MODEL, "input": ["z" * 15000] * 15}).encode()
    assert_openai_error(*call(url, "POST", "/v1/embeddings", raw=big), 413)
    assert_openai_error(*call(url, "POST", "/v1/embeddings", raw=b"{not json"), 400)
    assert_openai_error(*call(url, "GET", "/v1/nothing"), 404)
    assert_openai_error(*call(url, "GET", "/v1/embeddings"), 405)
    assert "".join("x" for _ in range(3)) and embed(url, ["still serving"], input_type="query")[0].shape == (1, 64)


def test_empty_text_is_an_error_in_every_variant(gateway, triton, reference):
    """One policy: the in-process Embedder, the Triton ensemble and the gateway all refuse ""
    (naming its position) instead of embedding the end token alone."""
    from moai_export.core.errors import MoaiError

    url, _ = gateway
    with pytest.raises(MoaiError, match="text 1 is empty"):
        reference.encode(["ok", ""], "query")
    status, _, body = call(url, "POST", "/v1/embeddings", {"model": MODEL, "input": ["ok", ""]})
    assert status == 400 and "input[1] is empty" in body["error"]["message"]
    import tritonclient.grpc as grpc_client
    from tritonclient.utils import InferenceServerException

    client = grpc_client.InferenceServerClient(triton.grpc_url)
    text = grpc_client.InferInput("TEXT", [2, 1], "BYTES")
    text.set_data_from_numpy(np.asarray([[b"ok"], [b""]], dtype=object))
    kind = grpc_client.InferInput("KIND", [2, 1], "BYTES")
    kind.set_data_from_numpy(np.asarray([[b"query"], [b"query"]], dtype=object))
    with pytest.raises(InferenceServerException, match="TEXT item 1 is empty"):
        client.infer(MODEL, [text, kind])


def raw_exchange(url: str, data: bytes, *, pause: float = 0, then: bytes = b"", wait: float = 10) -> tuple[float, bytes]:
    """Send raw bytes (`then` after `pause` s); (seconds until the server closed, what it answered)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        started = time.monotonic()
        try:
            sock.sendall(data)
            if then:
                time.sleep(pause)
                sock.sendall(then)
        except OSError:  # the server closed while we were still sending
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return time.monotonic() - started, answer


def parse_answer(answer: bytes) -> tuple[int, dict, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def rss_kib(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def test_huge_or_countless_headers_are_refused_431_without_growing_memory(gateway_process):
    url, _, process = gateway_process
    before = rss_kib(process.pid)
    line = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEYS[0].encode() + b"\r\n"
    huge = line + b"X-Big: " + b"a" * (64 << 20) + b"\r\n\r\n"  # 64 MiB: accepted before, memory 79 -> 155 MB
    for request in (huge, line + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n"):
        seconds, answer = raw_exchange(url, request, wait=5)
        status, headers, body = parse_answer(answer)
        assert status == 431 and headers["content-type"] == "application/json", answer[:300]
        assert_openai_error(status, headers, body, 431)
    assert rss_kib(process.pid) - before < 16 << 10
    assert call(url, "GET", "/v1/models")[0] == 200


def test_slow_clients_get_408_and_idle_connections_close(gateway):
    url, _ = gateway
    post = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEYS[0].encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 40\r\n")
    for partial, code in ((post, "header_timeout"), (post + b"\r\n" + b'{"model": ', "body_timeout")):
        seconds, answer = raw_exchange(url, partial)  # partial headers were held 30 s and more
        status, headers, body = parse_answer(answer)
        assert status == 408 and body["error"]["code"] == code and seconds < READ_TIMEOUT + 2, (seconds, answer)
    seconds, answer = raw_exchange(url, b"")  # connects, says nothing: closed quietly
    assert answer == b"" and seconds < READ_TIMEOUT + 2
    # an idle kept-alive connection is the keep-alive timeout's (75 s), not the header timeout's; a
    # body sent with the headers in one write is not counted as headers (over 16 KiB here)
    body = json.dumps({"model": MODEL, "input": ["kept alive " * 1000] * 2, "input_type": "document"}).encode()
    request = post.replace(b"Content-Length: 40", b"Content-Length: %d" % len(body)) + b"\r\n" + body
    last = request.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
    seconds, answer = raw_exchange(url, request, pause=READ_TIMEOUT + 1, then=last)
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer[:300]


def test_client_mistakes_are_4xx_in_openai_shape_and_counted(gateway):
    url, _ = gateway
    nested = b'{"model": "' + MODEL.encode() + b'", "input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    status, headers, body = call(url, "POST", "/v1/embeddings", raw=nested)  # was 500 (RecursionError)
    assert_openai_error(status, headers, body, 400)
    lone = b'{"model": "' + MODEL.encode() + b'", "input": ["ok", "a\\ud800b"]}'  # was 502 from Triton
    status, headers, body = call(url, "POST", "/v1/embeddings", raw=lone)
    assert_openai_error(status, headers, body, 400, param="input")
    assert body["error"]["message"].startswith("input[1] has a lone surrogate (U+D800)"), body
    _, answer = raw_exchange(url, b"GARBAGE / HTTP/9\r\n\r\n")  # was text/plain
    status, headers, body = parse_answer(answer)
    assert headers["content-type"] == "application/json" and "server" not in headers
    assert_openai_error(status, headers, body, 400)
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        page = response.read().decode()
    for route, code in (("embeddings", "invalid_json"), ("embeddings", "invalid_unicode"), ("http", "invalid_http")):
        assert f'moai_gateway_errors_total{{code="{code}",route="{route}"}}' in page, (route, code)


def test_health_names_the_upstream_to_key_holders_only(gateway, triton):
    url, _ = gateway
    for key in (None, "sk-wrong"):
        status, _, body = call(url, "GET", "/health", key=key)
        assert status == 200 and body == {"status": "ready"}, body
    status, _, body = call(url, "GET", "/health")
    assert status == 200 and body["upstream"] == triton.grpc_url, body


def _trickled_embedding(url: str, text: str) -> tuple[socket.socket, bytes]:
    """A request in flight: its headers and half its body sent; (its socket, the rest it owes)."""
    body = json.dumps({"model": MODEL, "input": [text], "input_type": "document"}).encode()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEYS[0].encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                 + body[:len(body) // 2])
    return sock, body[len(body) // 2:]


def test_stop_signals_finish_the_requests_in_flight(triton, reference, tmp_path):
    """SIGTERM cut requests still running after 10 s, SIGHUP cut them at once, SIGINT (under a
    parent ignoring it, as a background job) exited 0. Now each drains for --drain-timeout and
    exits 128 + the signal. One 11 s wait for all three gateways."""
    ignore_sigint = {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    stops = {signal.SIGTERM: {}, signal.SIGHUP: {}, signal.SIGINT: ignore_sigint}
    gateways = {sig: start_gateway(triton, tmp_path / f"{sig.name}.log", "--drain-timeout", "20", **popen)
                for sig, popen in stops.items()}
    texts = [f"in flight {i}" for i in range(3)]
    in_flight = {sig: [_trickled_embedding(url, text) for text in texts] for sig, (url, _) in gateways.items()}
    time.sleep(0.5)
    for sig, (_, process) in gateways.items():
        process.send_signal(sig)
    time.sleep(11)
    expected = reference.encode(texts, "document")
    for sig, (url, process) in gateways.items():
        assert process.poll() is None, f"{sig.name}: the gateway left with requests in flight"
        for i, (sock, rest) in enumerate(in_flight[sig]):
            sock.sendall(rest)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            sock.close()
            status, _, body = parse_answer(answer)
            assert status == 200, (sig.name, answer[:300])
            assert cosine_rows(np.asarray([body["data"][0]["embedding"]]), expected[i:i + 1])[0] >= 0.99999
        assert process.wait(30) == 128 + sig, sig.name


def test_metrics_and_models(gateway):
    url, _ = gateway
    embed(url, ["metrics"], input_type="document")
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        page = response.read().decode()
    for name in ("moai_gateway_requests_total", "moai_gateway_errors_total", "moai_gateway_request_seconds_bucket",
                 "moai_gateway_prompt_tokens_total"):
        assert name in page
    status, _, card = call(url, "GET", f"/v1/models/{MODEL}")
    assert status == 200 and card["moai_contract"]["dims"] == 64 and card["moai_backend"] == "triton"


def test_verify_and_bench_drive_the_gateway_as_a_variant(gateway, example_dir, tmp_path, monkeypatch):
    url, _ = gateway
    monkeypatch.setenv("MOAI_GATEWAY_API_KEY", KEYS[0])
    spec = f"openai-http://{url.removeprefix('http://')}/{MODEL}"
    result = CliRunner().invoke(main, ["verify", spec, "--reference", f"{example_dir / 'base'}+{example_dir / 'adapter'}",
                                       "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    result = CliRunner().invoke(main, ["verify", spec, "--reference", f"{example_dir / 'base'}+{example_dir / 'adapter'}",
                                       "--dims", "32", "--json", str(tmp_path / "v32.json")])
    assert result.exit_code == 0 and json.loads((tmp_path / "v32.json").read_text())["dims"] == 32, result.output
    with load_embedder(spec, dims=32) as embedder:
        assert embedder.encode(["x"], "query").shape == (1, 32)
        assert embedder.encode(["y"] * 40, "document", batch_size=64).shape == (40, 32)  # split under --max-texts


def test_triton_down_gives_503_and_the_gateway_recovers_on_another_repository(gateway, triton, onnx_fp32_dir,
                                                                              tmp_path):
    """Last in this module: stops the module's tritonserver and starts it on the same ports with
    another repository, which declares another precision: the model card follows it (it kept the
    first Triton's precision)."""
    from moai_export.export.triton import TritonOptions, write_repository

    url, _ = gateway
    other = tmp_path / "models"
    write_repository(onnx_fp32_dir, other, TritonOptions(max_batch_size=8, verify="none"), log=lambda m: None)
    ensemble = other / MODEL / "config.pbtxt"
    declared = re.sub(r'(key: "moai_precision"\s*value \{\s*string_value: )"fp32"', r'\1"int8"', ensemble.read_text())
    assert declared != ensemble.read_text()
    ensemble.write_text(declared)
    assert call(url, "GET", f"/v1/models/{MODEL}")[2]["moai_precision"] == "fp32"
    triton.stop()
    started = time.monotonic()
    status, headers, body = call(url, "POST", "/v1/embeddings", {"model": MODEL, "input": ["while down"],
                                                                 "input_type": "query"})
    assert_openai_error(status, headers, body, 503)
    assert headers.get("retry-after") == "1" and time.monotonic() - started < 10  # no hang
    assert call(url, "GET", "/health")[0] == 503
    triton.repository = other
    triton.start(timeout=180)
    deadline = time.monotonic() + 30
    while call(url, "GET", "/health")[0] != 200:
        assert time.monotonic() < deadline, "the gateway did not see Triton come back"
        time.sleep(0.3)
    assert embed(url, ["after the restart"], input_type="query")[0].shape == (1, 64)
    deadline = time.monotonic() + 15
    while call(url, "GET", f"/v1/models/{MODEL}")[2]["moai_precision"] != "int8":
        assert time.monotonic() < deadline, "the model card still shows the first Triton's precision"
        time.sleep(0.5)


def test_an_ensemble_without_token_counts_is_recognised(reference):
    """Repositories written before TOKENS existed: the gateway refuses them at connect (it no
    longer tokenizes), so reading the declaration must tell the two apart."""
    from moai_export.embedders.triton import ServedEnsemble

    contract = json.dumps(reference.contract.to_dict())
    config = {"max_batch_size": 8, "parameters": {"moai_contract": {"string_value": contract}},
              "output": [{"name": "EMBEDDING"}]}
    assert not ServedEnsemble.from_config(config, "old").counts_tokens
    config["output"].append({"name": "TOKENS"})
    assert ServedEnsemble.from_config(config, "new").counts_tokens
    assert not ServedEnsemble.from_config(config, "before truncation was reported").reports_truncation
    config["output"].append({"name": "UNTRUNCATED_TOKENS"})
    assert ServedEnsemble.from_config(config, "newest").reports_truncation


@pytest.mark.parametrize("args, words", [
    ([], "exactly one backend"),
    (["--triton", "grpc://127.0.0.1:1", "--model", MODEL, "--vllm", "http://127.0.0.1:2"], "exactly one backend"),
    (["--triton", "grpc://127.0.0.1:1"], "--triton needs --model"),
    (["--vllm", "http://127.0.0.1:2"], "--vllm needs --vllm-artifact"),
    (["--vllm", "127.0.0.1:2", "--vllm-artifact", "{tmp}"], "expected http://HOST:PORT"),
    (["--vllm", "http://127.0.0.1:2", "--vllm-artifact", "{tmp}"], "no vllm_serve.json"),
])
def test_the_gateway_fronts_exactly_one_backend(monkeypatch, tmp_path, args, words):
    served = []
    monkeypatch.setattr("moai_export.gateway.server.serve", lambda config, log_level="info": served.append(config))
    result = CliRunner().invoke(main, ["gateway", *(a.replace("{tmp}", str(tmp_path)) for a in args)],
                                env={"MOAI_GATEWAY_API_KEYS": None})
    assert result.exit_code == 1 and not served and words in result.output, result.output
