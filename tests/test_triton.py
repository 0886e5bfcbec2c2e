"""The Triton deployment against a REAL tritonserver (from the nvidia-pytriton wheel, CPU,
python backend), started by the suite on free loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from moai_export.commands.export_cli import main
from moai_export.core.errors import MoaiError
from moai_export.embedders import load_embedder
from moai_export.export.triton import TritonOptions, parse_config, write_repository
from moai_export.gates.parity import cosine_rows
from moai_export.gates.probes import long_text
from moai_export.launchers.triton_server import LaunchError, TritonServer, free_ports, runtime_venv

# Skipped only outside CI, where someone ran pytest without `make test`; in CI a missing
# runtime is a failure, never a silent skip.
pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not list(runtime_venv().glob("lib/python3*/site-packages/pytriton/tritonserver")),
    reason="Triton runtime environment missing: run serve/triton/setup_env.sh (make test does)",
)

MAX_BATCH = 8


@pytest.fixture(scope="module")
def onnx_dir(onnx_fp32_dir):
    return onnx_fp32_dir


@pytest.fixture(scope="module")
def repo(onnx_dir, reference, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "models"
    # a long queue delay so concurrent requests are seen to batch
    write_repository(onnx_dir, repo, TritonOptions(max_batch_size=MAX_BATCH, max_queue_delay_us=50_000),
                     log=lambda m: None, reference=reference, reference_label="peft")
    assert reference.encode(["still usable"], "query").shape == (1, 64)  # the caller's reference stays open
    return repo


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    http, grpc, metrics = free_ports(3)
    log = tmp_path_factory.mktemp("triton-log") / "server.log"
    with TritonServer(repo, http, grpc, metrics, log_path=log).start(timeout=120) as running:
        yield running


@pytest.fixture(scope="module")
def reference(example_dir):
    return load_embedder(f"peft:{example_dir / 'base'}+{example_dir / 'adapter'}")


def http_client(server):
    import tritonclient.http as client

    return client.InferenceServerClient(server.http_url)


def raw_infer(server, text_values, kind_values=None, dtype="BYTES", model="moai_embedding", send=("TEXT", "KIND")):
    import tritonclient.http as client

    kind_values = [b"document"] * len(text_values) if kind_values is None else kind_values
    inputs = []
    if "TEXT" in send:
        inputs.append(client.InferInput("TEXT", [len(text_values), 1], dtype))
        inputs[0].set_data_from_numpy(np.asarray(text_values, dtype=object if dtype == "BYTES" else np.int32)
                                      .reshape(len(text_values), 1))
    if "KIND" in send:
        kinds = client.InferInput("KIND", [len(kind_values), 1], "BYTES")
        kinds.set_data_from_numpy(np.asarray(kind_values, dtype=object).reshape(-1, 1))
        inputs.append(kinds)
    return http_client(server).infer(model, inputs).as_numpy("EMBEDDING")


def test_every_config_parses_against_the_model_config_schema(repo, onnx_dir, tmp_path):
    other = tmp_path / "gpu"
    write_repository(onnx_dir, other, TritonOptions(encoder="onnxruntime", tensorrt=True, instances=2, verify="none"),
                     log=lambda m: None)
    configs = list(repo.glob("*/config.pbtxt")) + list(other.glob("*/config.pbtxt"))
    assert len(configs) == 6
    for path in configs:
        config = parse_config(path.read_text())
        assert config.name == path.parent.name and config.max_batch_size > 0
    gpu = parse_config((other / "moai_embedding_encoder" / "config.pbtxt").read_text())
    assert gpu.platform == "onnxruntime_onnx"
    assert gpu.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    with pytest.raises(Exception):
        parse_config('name: "x"\nmax_batch_sise: 4\n')  # a typo must not parse


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_parity_with_peft_reference(server, reference, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with load_embedder(f"triton-{protocol}://{url}/moai_embedding") as triton:
        assert triton.contract == reference.contract and triton.precision == "fp32"
        texts = ["BC카드 연회비는 어떻게 되나요?", "a", "해외 결제 수수료 " * 30, long_text(1024)]
        for kind in ("query", "document"):
            served = triton.encode(texts, kind)
            assert cosine_rows(served, reference.encode(texts, kind)).min() >= 0.99999
        assert cosine_rows(triton.encode(texts[:2], "query"), triton.encode(texts[:2], "document")).max() < 0.999


def test_verify_accepts_a_triton_endpoint(server, example_dir, tmp_path):
    result = CliRunner().invoke(main, ["verify", f"triton-grpc://{server.grpc_url}/moai_embedding",
                                       "--reference", f"{example_dir / 'base'}+{example_dir / 'adapter'}",
                                       "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


def test_dynamic_batching_really_batches(server):
    client = http_client(server)
    before = client.get_inference_statistics("moai_embedding_encoder")["model_stats"][0]
    errors = []

    def one_request(i):
        try:
            raw_infer(server, [f"동시 요청 {i}".encode()])
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one_request, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    after = client.get_inference_statistics("moai_embedding_encoder")["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 24 and executions < inferences


def test_requests_batched_together_keep_their_own_vectors(server, reference):
    """The encoder unpads what the dynamic batcher hands it, sorts it by length and cuts passes
    under its token budget: concurrent requests mixing near-max documents and short texts each
    get their own vector (fp32 gate, cosine >= 0.99999), whatever shares their execution."""
    texts = [long_text(1024) if i % 3 == 0 else f"동시 요청 {i} " * (1 + i) for i in range(12)]
    answers, errors = [None] * len(texts), []

    def one_request(i):
        try:
            answers[i] = raw_infer(server, [texts[i].encode()])[0]
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one_request, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cosine_rows(np.stack(answers), reference.encode(texts, "document")).min() >= 0.99999


@pytest.mark.parametrize(
    "texts, kinds, dtype, message",
    [
        ([b""], None, "BYTES", "TEXT item 0 is empty"),
        ([b"ok", b"\xff\xfe broken"], None, "BYTES", "TEXT item 1 is not valid UTF-8"),
        ([b"x"], [b"passage"], "BYTES", "unknown KIND"),
        ([7], None, "INT32", "data-type is 'INT32'"),
        ([b"x"] * (MAX_BATCH + 1), None, "BYTES", "batch"),
    ],
)
def test_bad_requests_get_errors_and_the_server_keeps_serving(server, texts, kinds, dtype, message):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as error:
        raw_infer(server, texts, kinds, dtype)
    assert message.lower() in str(error.value).lower()
    assert raw_infer(server, [b"still serving"]).shape == (1, 64)


@pytest.mark.parametrize("send, missing", [(("KIND",), "TEXT"), (("TEXT",), "KIND")])
def test_a_request_missing_an_input_is_refused_by_name(server, send, missing):
    """KIND is required too: a client that forgot it would get document vectors for its queries."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=f"missing required input\\(s\\) \\['{missing}'\\]"):
        raw_infer(server, [b"x"], send=send)


def test_text_far_over_max_tokens_is_truncated_not_rejected(server, reference):
    text = long_text(1024) * 5
    served = raw_infer(server, [text.encode()], [b"query"])
    assert cosine_rows(served, reference.encode([text], "query"))[0] >= 0.99999


def test_client_errors_are_clear(server):
    (dead_port,) = free_ports(1)
    with pytest.raises(MoaiError, match="not ready"):
        load_embedder(f"triton-http://127.0.0.1:{dead_port}/moai_embedding", ready_timeout=1)
    with pytest.raises(MoaiError, match="no ready model"):
        load_embedder(f"triton-grpc://{server.grpc_url}/no_such_model")
    with pytest.raises(MoaiError, match="HOST:PORT/MODEL"):
        load_embedder("triton-http://127.0.0.1")


def test_large_inputs_split_into_requests_of_max_batch_size(server):
    with load_embedder(f"triton-http://{server.http_url}/moai_embedding", concurrency=3) as triton:
        vectors = triton.encode([f"문서 {i}" for i in range(MAX_BATCH * 3 + 5)], "document")
    assert vectors.shape == (MAX_BATCH * 3 + 5, 64) and np.isfinite(vectors).all()


def test_launcher_kills_a_server_that_never_gets_ready(tmp_path):
    """A model whose initialize hangs (as a stub that cannot start does) keeps Triton
    "loading" forever: the launcher must give up at its deadline and kill the server."""
    model = tmp_path / "repo" / "hangs"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(
        "import time\nclass TritonPythonModel:\n    def initialize(self, args):\n        time.sleep(3600)\n")
    (model / "config.pbtxt").write_text(
        'name: "hangs"\nbackend: "python"\nmax_batch_size: 1\n'
        'input { name: "X" data_type: TYPE_FP32 dims: [1] }\noutput { name: "Y" data_type: TYPE_FP32 dims: [1] }\n')
    server = TritonServer(tmp_path / "repo", *free_ports(3))
    started = time.monotonic()
    with pytest.raises(LaunchError, match="not ready"):
        server.start(timeout=6)
    assert time.monotonic() - started < 30
    assert server.process.poll() is not None  # killed


def test_run_local_script(repo):
    """The documented launcher: serve/triton/run_local.sh REPO, on 127.0.0.1."""
    http, grpc, metrics = free_ports(3)
    script = Path(__file__).resolve().parents[1] / "serve" / "triton" / "run_local.sh"
    process = subprocess.Popen([str(script), str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
                                "--metrics-port", str(metrics)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env={**os.environ, "MOAI_PYTHON": sys.executable},
                               start_new_session=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "ready" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
        assert f"127.0.0.1:{http}" in line
        import tritonclient.http as client

        assert client.InferenceServerClient(f"127.0.0.1:{http}").is_model_ready("moai_embedding")
    finally:
        import signal

        os.killpg(process.pid, signal.SIGINT)
        process.wait(60)


def test_triton_cli_writes_and_refuses(onnx_dir, tmp_path):
    result = CliRunner().invoke(main, ["triton", str(onnx_dir), "--repo", str(tmp_path / "r"), "--name", "emb",
                                       "--max-batch-size", "4", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert "NOT run through a server" in result.output
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"emb", "emb_tokenizer", "emb_encoder"}
    assert parse_config((tmp_path / "r" / "emb_tokenizer" / "config.pbtxt").read_text()).max_batch_size == 4
    result = CliRunner().invoke(main, ["triton", str(onnx_dir), "--repo", str(tmp_path / "r"), "--name", "emb"])
    assert result.exit_code == 1 and "--force" in result.output
    result = CliRunner().invoke(main, ["triton", str(onnx_dir), "--repo", str(tmp_path / "r"), "--name", "emb",
                                       "--version", "2", "--no-verify"])
    assert result.exit_code == 0, result.output  # a new version beside the old one
    assert sorted(p.name for p in (tmp_path / "r" / "emb_encoder").iterdir() if p.name.isdigit()) == ["1", "2"]
    result = CliRunner().invoke(main, ["triton", str(onnx_dir), "--repo", str(tmp_path / "r2"), "--tensorrt"])
    assert result.exit_code == 1 and "--encoder onnxruntime" in result.output
    result = CliRunner().invoke(main, ["triton", str(onnx_dir), "--repo", str(tmp_path / "r2"), "--encoder",
                                       "onnxruntime"])
    assert result.exit_code == 1 and "--verify-with" in result.output  # no silent skip of the gate
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["triton", str(onnx_dir), "--repo", str(tmp_path / "file"), "--no-verify"])
    assert result.exit_code == 1 and "exists as a file" in result.output
    result = CliRunner().invoke(main, ["triton", str(tmp_path), "--repo", str(tmp_path / "r3")])
    assert result.exit_code == 1 and "no model.onnx" in result.output


def test_written_repository_was_verified_on_a_real_server(repo):
    """The ensemble's manifest says in which configuration the three models were run together,
    and covers every file of the three."""
    manifest = json.loads((repo / "moai_embedding" / "moai_manifest.json").read_text())
    [admitted] = manifest["admitted_for"]
    assert (admitted["runtime"], admitted["device"], admitted["dtype"], admitted["provider"]) == (
        "triton", "cpu", "fp32", "python")
    assert admitted["gate"]["min_cosine"] >= 0.99999
    files = set(manifest["files"])
    assert {"moai_embedding_tokenizer/1/tokenizer.json", "moai_embedding_tokenizer/1/moai_contract.json",
            "moai_embedding_encoder/1/model.onnx", "moai_embedding_encoder/config.pbtxt",
            "moai_embedding/config.pbtxt"} <= files
    parity = json.loads((repo / "moai_embedding" / "moai_parity.json").read_text())
    assert parity["passed"] and parity["gates"][0]["config"] == "triton on cpu in fp32, python"
    assert not list(repo.parent.glob(".models.tmp*"))


def _damage_query_prompt(tokenizer_dir: Path) -> None:
    path = tokenizer_dir / "moai_contract.json"
    contract = json.loads(path.read_text())
    contract["prompts"]["query"] = "Query: "  # the server would forget the instruction
    path.write_text(json.dumps(contract))


def test_a_tokenizer_model_that_forgets_the_prompt_fails_the_gate(onnx_dir, tmp_path, monkeypatch):
    """Break it at export: the Triton tokenizer model's contract loses the query instruction."""
    from moai_export.core.errors import VerificationFailed
    from moai_export.export.triton import repository as triton_repository

    real = triton_repository.write_models

    def damaged(staging, *args, **kwargs):
        real(staging, *args, **kwargs)
        _damage_query_prompt(staging / "moai_embedding_tokenizer" / "1")

    monkeypatch.setattr(triton_repository, "write_models", damaged)
    with pytest.raises(VerificationFailed, match="q:"):
        write_repository(onnx_dir, tmp_path / "models", TritonOptions(), log=lambda m: None)
    assert not (tmp_path / "models").exists()


def test_unverified_repository_is_refused_until_verify_admits_it(onnx_dir, example_dir, tmp_path):
    repo = tmp_path / "models"
    write_repository(onnx_dir, repo, TritonOptions(verify="none", tensorrt=False), log=lambda m: None)
    launcher = [sys.executable, "-m", "moai_export.launchers.triton_server", "--repo", str(repo),
                "--http-port", "1", "--grpc-port", "2", "--metrics-port", "3"]
    refused = subprocess.run(launcher, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "not verified for triton on cpu in fp32, python" in refused.stderr
    reference = f"{example_dir / 'base'}+{example_dir / 'adapter'}"
    damaged = tmp_path / "damaged"
    shutil.copytree(repo, damaged)
    _damage_query_prompt(damaged / "moai_embedding_tokenizer" / "1")
    result = CliRunner().invoke(main, ["verify", str(repo), str(damaged), "--reference", reference,
                                       "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 3, result.output  # the damaged copy fails; a bare repo dir is run on a real server
    results = json.loads((tmp_path / "v.json").read_text())["results"]
    assert [(r["kind"], r["passed"]) for r in results] == [("triton", True), ("triton", False)]
    assert results[0]["admitted"] is True and "admitted" not in results[1]
    from moai_export.artifacts.triton_admission import check_repository_admitted

    check_repository_admitted(repo, "moai_embedding")  # the launcher now serves it


def test_tensorrt_fp16_is_labelled_fp16(onnx_dir, tmp_path):
    """Defect 3: an FP16 TensorRT encoder was labelled with the ONNX artifact's precision."""
    repo = tmp_path / "gpu"
    write_repository(onnx_dir, repo, TritonOptions(encoder="onnxruntime", tensorrt=True, verify="none"),
                     log=lambda m: None)
    ensemble = parse_config((repo / "moai_embedding" / "config.pbtxt").read_text())
    assert ensemble.parameters["moai_precision"].string_value == "fp16"
    manifest = json.loads((repo / "moai_embedding" / "moai_manifest.json").read_text())
    assert manifest["options"]["precision"] == "fp16" and manifest["admitted_for"] == []


def test_verify_with_a_server_started_on_the_written_repository(onnx_dir, tmp_path):
    """--verify-with URL: the repository is published, the writer waits until the server at URL
    serves exactly these files (its repository id), gates it and records the admission; the
    same server is then checked through `verify ...?repository=` too."""
    repo = tmp_path / "models"
    http, grpc, metrics = free_ports(3)
    outcome = {}

    def write():
        try:
            write_repository(onnx_dir, repo, TritonOptions(verify=f"grpc://127.0.0.1:{grpc}", verify_wait_s=240),
                             log=lambda m: None)
            outcome["ok"] = True
        except Exception as exc:  # asserted below
            outcome["error"] = exc

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 240
    while not (repo / "moai_embedding" / "moai_manifest.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    with TritonServer(repo, http, grpc, metrics).start(timeout=120):
        writer.join(300)
        assert outcome.get("ok"), outcome
        manifest = json.loads((repo / "moai_embedding" / "moai_manifest.json").read_text())
        assert [(a["runtime"], a["device"], a["provider"]) for a in manifest["admitted_for"]] == [
            ("triton", "cpu", "python")]
        with load_embedder(f"triton-grpc://127.0.0.1:{grpc}/moai_embedding?repository={repo}") as served:
            assert served.artifact_dir == repo / "moai_embedding" and served.serving.runtime == "triton"
        with pytest.raises(MoaiError, match="does not serve"):
            load_embedder(f"triton-grpc://127.0.0.1:{grpc}/moai_embedding?repository={tmp_path / 'other'}")
