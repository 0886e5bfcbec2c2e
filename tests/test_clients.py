"""The clients people use, against a REAL gateway in front of a REAL tritonserver (the fp32 ONNX
artifact): the official `openai` client, LangChain's and LlamaIndex's stock OpenAI classes, the
adapters of `moai_export.integrations`, and the README's snippets. Every vector is compared with the
float32 PEFT reference; a request that does not choose its kind must be refused, never guessed."""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import test_gateway
from test_gateway import KEYS, MODEL, TEXTS, openai_client, start_gateway

from moai_export.core.errors import MoaiError
from moai_export.gates.parity import cosine_rows
from moai_export.gateway.config import GatewayConfig

# test_gateway's server fixtures, as this module's own (module scope: one Triton for this module), and its skip
reference, repo, triton = test_gateway.reference, test_gateway.repo, test_gateway.triton
pytestmark = test_gateway.pytestmark

MAX_TEXTS = 4  # the module gateway's --max-texts: the adapters must cut larger batches at it
DOCUMENTS = [f"{text} ({i})" for i, text in enumerate(TEXTS * 2)][:7]  # two requests of at most 4
README_DOCS = [Path(__file__).resolve().parents[1] / name for name in ("README.md", "serve/gateway/README.md")]


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory):
    """Base URL of the module's gateway (no default kind: the rule a deployment gets unless it chooses)."""
    log = tmp_path_factory.mktemp("clients") / "gateway.log"
    url, process = start_gateway(triton, log, "--max-texts", str(MAX_TEXTS))
    assert "a request must choose the kind" in log.read_text()  # said at start
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def assert_like_reference(vectors, reference, texts, kind, dims=None):
    vectors = np.asarray(vectors, dtype=np.float32)
    expected = reference.encode(texts, kind)
    assert vectors.shape == (len(texts), dims or expected.shape[1])
    assert cosine_rows(vectors, expected[:, :vectors.shape[1]]).min() >= 0.99999, kind


def embedding_requests(url: str) -> int:
    """/v1/embeddings requests the gateway answered with 200 so far."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        page = response.read().decode()
    found = re.search(r'moai_gateway_requests_total\{route="embeddings",status="200"\} (\S+)', page)
    return int(float(found.group(1))) if found else 0


def test_openai_client_float_base64_and_dimensions(gateway, reference):
    client = openai_client(gateway)
    texts = TEXTS[:MAX_TEXTS]
    for kind in ("query", "document"):
        # no encoding_format: the client asks for base64 and decodes it itself
        default = client.embeddings.create(model=MODEL, input=texts, extra_body={"input_type": kind})
        floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float",
                                          extra_body={"input_type": kind})
        assert_like_reference([d.embedding for d in default.data], reference, texts, kind)
        np.testing.assert_array_equal(np.asarray([d.embedding for d in default.data], dtype=np.float32),
                                      np.asarray([d.embedding for d in floats.data], dtype=np.float32))
        short = client.embeddings.create(model=MODEL, input=texts, dimensions=32, extra_body={"input_type": kind})
        short = np.asarray([d.embedding for d in short.data], dtype=np.float32)
        np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
        assert_like_reference(short, reference, texts, kind, dims=32)


def assert_refused_naming_both_ways(error) -> None:
    """The 400 a request without a kind gets: it says how to choose one, both ways."""
    assert error.status_code == 400 and error.body["param"] == "input_type", error.body
    assert error.body["code"] == "missing_input_type"
    message = error.body["message"]
    assert 'extra_body={"input_type": "query"}' in message, message
    assert f"'{MODEL}:query'" in message and f"'{MODEL}:document'" in message, message


def test_stock_clients_without_input_type_are_refused_naming_both_ways(gateway):
    import openai
    from langchain_openai import OpenAIEmbeddings
    from llama_index.embeddings.openai import OpenAIEmbedding

    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(gateway).embeddings.create(model=MODEL, input=["연회비는 얼마인가요?"])
    assert_refused_naming_both_ways(refused.value)
    # LangChain's default tokenizes with tiktoken and sends token arrays: strings are asked for here
    langchain = OpenAIEmbeddings(model=MODEL, base_url=f"{gateway}/v1", api_key=KEYS[0], max_retries=0,
                                 check_embedding_ctx_length=False)
    for embed in (lambda: langchain.embed_query("연회비는 얼마인가요?"), lambda: langchain.embed_documents(["문서"])):
        with pytest.raises(openai.BadRequestError) as refused:
            embed()
        assert_refused_naming_both_ways(refused.value)
    llama = OpenAIEmbedding(model_name=MODEL, api_base=f"{gateway}/v1", api_key=KEYS[0], max_retries=1)
    for embed in (lambda: llama.get_query_embedding("연회비는 얼마인가요?"), lambda: llama.get_text_embedding("문서")):
        with pytest.raises(openai.BadRequestError) as refused:
            embed()
        assert_refused_naming_both_ways(refused.value)


def test_model_aliases_choose_the_kind_for_the_stock_openai_client(gateway, reference):
    import openai

    client = openai_client(gateway)
    assert [card.id for card in client.models.list().data] == [MODEL, f"{MODEL}:query", f"{MODEL}:document"]
    for kind in ("query", "document"):
        card = client.models.retrieve(f"{MODEL}:{kind}")
        assert card.model_extra["moai_input_type"] == kind and card.model_extra["moai_max_texts"] == MAX_TEXTS
        answer = client.embeddings.create(model=f"{MODEL}:{kind}", input=TEXTS[:MAX_TEXTS])
        assert_like_reference([d.embedding for d in answer.data], reference, TEXTS[:MAX_TEXTS], kind)
        # the alias and input_type agreeing is fine; contradicting, a 400
        client.embeddings.create(model=f"{MODEL}:{kind}", input=["x"], extra_body={"input_type": kind})
    assert client.models.retrieve(MODEL).model_extra["moai_input_type"] is None  # the body must say
    with pytest.raises(openai.BadRequestError, match="embeds every text as a query, but 'input_type' is 'document'") as refused:
        client.embeddings.create(model=f"{MODEL}:query", input=["x"], extra_body={"input_type": "document"})
    assert refused.value.body["param"] == "input_type"


def test_langchain_adapter_embeds_queries_and_documents_like_the_reference(gateway, reference):
    from langchain_core.embeddings import Embeddings

    from moai_export.integrations.langchain import MoaiGatewayEmbeddings

    embeddings = MoaiGatewayEmbeddings(base_url=f"{gateway}/v1", model=MODEL, api_key=KEYS[1])
    assert isinstance(embeddings, Embeddings)
    assert_like_reference([embeddings.embed_query(text) for text in TEXTS], reference, TEXTS, "query")
    before = embedding_requests(gateway)
    assert_like_reference(embeddings.embed_documents(DOCUMENTS), reference, DOCUMENTS, "document")
    assert embedding_requests(gateway) - before == 2  # 7 texts in requests of --max-texts 4
    assert embeddings.embed_documents([]) == []
    assert_like_reference(asyncio.run(embeddings.aembed_documents(DOCUMENTS[:2])), reference, DOCUMENTS[:2], "document")
    short = MoaiGatewayEmbeddings(base_url=f"{gateway}/v1", model=MODEL, api_key=KEYS[1], dimensions=32)
    assert_like_reference([short.embed_query(TEXTS[0])], reference, TEXTS[:1], "query", dims=32)


def test_llama_index_adapter_embeds_queries_and_texts_like_the_reference(gateway, reference):
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from moai_export.integrations.llama_index import MoaiGatewayEmbedding

    model = MoaiGatewayEmbedding(base_url=f"{gateway}/v1", model_name=MODEL, api_key=KEYS[1])
    assert isinstance(model, BaseEmbedding) and KEYS[1] not in model.model_dump_json()  # the key is not a field
    assert_like_reference([model.get_query_embedding(text) for text in TEXTS], reference, TEXTS, "query")
    before = embedding_requests(gateway)
    assert_like_reference(model.get_text_embedding_batch(DOCUMENTS), reference, DOCUMENTS, "document")
    assert embedding_requests(gateway) - before == 2  # 7 texts in requests of --max-texts 4
    assert_like_reference([model.get_text_embedding(DOCUMENTS[0])], reference, DOCUMENTS[:1], "document")
    assert_like_reference([asyncio.run(model.aget_query_embedding(TEXTS[0]))], reference, TEXTS[:1], "query")
    short = MoaiGatewayEmbedding(base_url=f"{gateway}/v1", model_name=MODEL, api_key=KEYS[1], dimensions=32)
    assert_like_reference([short.get_text_embedding(TEXTS[0])], reference, TEXTS[:1], "document", dims=32)


def test_adapters_pass_the_api_key(gateway, monkeypatch):
    import openai

    from moai_export.integrations.gateway_client import GatewayClient

    with pytest.raises(openai.AuthenticationError):
        GatewayClient(f"{gateway}/v1", MODEL, api_key="sk-wrong", max_retries=0).embed(["x"], "query")
    assert len(GatewayClient(f"{gateway}/v1", MODEL, api_key=KEYS[0]).embed(["x"], "query")[0]) == 64
    monkeypatch.setenv("MOAI_GATEWAY_API_KEY", KEYS[1])  # the variable openai-http:// targets read too
    assert len(GatewayClient(f"{gateway}/v1", MODEL).embed(["x"], "query")[0]) == 64
    with pytest.raises(MoaiError, match="expected one of query, document"):
        GatewayClient(f"{gateway}/v1", MODEL, api_key=KEYS[0]).embed(["x"], "passage")


def readme_snippets() -> list[tuple[str, str]]:
    """(doc, code) of every Python block of the docs that talks to the gateway."""
    found = []
    for doc in README_DOCS:
        for code in re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            if "127.0.0.1:8080" in code:
                found.append((doc.name, code))
    return found


def test_readme_snippets_run_against_the_gateway(gateway):
    snippets = readme_snippets()
    assert len(snippets) >= 4, snippets  # openai, the aliases, LangChain, LlamaIndex
    for doc, code in snippets:
        code = re.sub(r'api_key="[^"]*"', f"api_key={KEYS[0]!r}", code.replace("http://127.0.0.1:8080", gateway))
        exec(compile(code, doc, "exec"), {})  # a 400 (say, a request without a kind) raises here


def test_a_default_input_type_is_an_explicit_choice(triton, reference, tmp_path):
    """--default-input-type: requests without a kind get it (and the gateway says so at start);
    input_type and the aliases still choose."""
    log = tmp_path / "gateway.log"
    url, process = start_gateway(triton, log, "--default-input-type", "query")
    try:
        assert "without input_type or a kind alias is embedded as a query" in log.read_text()
        client = openai_client(url)
        texts = TEXTS[:2]
        for model, extra, kind in ((MODEL, None, "query"), (MODEL, {"input_type": "document"}, "document"),
                                   (f"{MODEL}:document", None, "document")):
            answer = client.embeddings.create(model=model, input=texts, extra_body=extra)
            assert_like_reference([d.embedding for d in answer.data], reference, texts, kind)
        assert client.models.retrieve(MODEL).model_extra["moai_input_type"] == "query"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    with pytest.raises(MoaiError, match="--default-input-type must be one of query, document"):
        GatewayConfig("127.0.0.1:1", MODEL, default_input_type="passage").validate()
