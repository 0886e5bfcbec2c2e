"""The standard-library client of a Triton encoder model (embedders/triton_encoder.py): the
binary-tensor request it writes is read back the way Triton's HTTP endpoint reads it, and an
answer in Triton's shape becomes vectors; the connection is a double that answers in place of
the server (tritonserver itself is exercised by the Triton tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moai_export.core.contract import EmbeddingContract
from moai_export.core.errors import MoaiError
from moai_export.embedders.triton_encoder import HEADER_LENGTH, TritonEncoderEmbedder, infer_request, infer_response


def read_like_triton(body: bytes, headers: dict) -> tuple[dict, dict[str, np.ndarray]]:
    length = int(headers[HEADER_LENGTH])
    header = json.loads(body[:length])
    arrays, offset = {}, length
    for tensor in header["inputs"]:
        size = tensor["parameters"]["binary_data_size"]
        assert tensor["datatype"] == "INT64"
        arrays[tensor["name"]] = np.frombuffer(body[offset:offset + size], "<i8").reshape(tensor["shape"])
        offset += size
    assert offset == len(body)
    return header, arrays


def answer_like_triton(vectors: np.ndarray) -> tuple[bytes, str]:
    header = json.dumps({"outputs": [{"name": "sentence_embedding", "datatype": "FP32", "shape": list(vectors.shape),
                                      "parameters": {"binary_data_size": vectors.nbytes}}]}).encode()
    return header + vectors.astype("<f4").tobytes(), str(len(header))


def test_request_carries_both_tensors_in_order_as_int64():
    ids = np.array([[5, 6, 7], [8, 9, 0]], dtype=np.int32)
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    body, headers = infer_request({"input_ids": ids, "attention_mask": mask})
    header, arrays = read_like_triton(body, headers)
    assert headers["Content-Type"] == "application/octet-stream"
    assert [t["name"] for t in header["inputs"]] == ["input_ids", "attention_mask"]
    assert header["outputs"] == [{"name": "sentence_embedding", "parameters": {"binary_data": True}}]
    assert np.array_equal(arrays["input_ids"], ids) and np.array_equal(arrays["attention_mask"], mask)


def test_response_is_the_binary_part_after_the_header():
    vectors = np.arange(8, dtype=np.float32).reshape(2, 4)
    body, length = answer_like_triton(vectors)
    assert np.array_equal(infer_response(body, length, 2), vectors)


class Answer:
    def __init__(self, status, body, length=None):
        self.status, self.body, self.length = status, body, length

    def read(self):
        return self.body

    def getheader(self, name):
        return self.length if name == HEADER_LENGTH else None


class FakeConnection:
    """http.client.HTTPConnection answering as a Triton encoder model: each row's vector is its
    first token id, one-hot."""

    def __init__(self, status=200):
        self.status, self.requests = status, []

    def request(self, method, path, body, headers):
        self.requests.append((method, path))
        self.last = read_like_triton(body, headers)[1]

    def getresponse(self):
        if self.status != 200:
            return Answer(self.status, b'{"error": "model not ready"}')
        ids = self.last["input_ids"]
        vectors = np.eye(4, dtype=np.float32)[ids[:, 0] % 4]
        return Answer(200, *answer_like_triton(vectors))

    def close(self):
        pass


CONTRACT = EmbeddingContract(pooling="mean", normalize=True, dims=4, max_tokens=32, padding_side="right",
                             pad_token="[PAD]", pad_token_id=0, end_token=None, end_token_id=None)


def test_forward_posts_to_the_model_and_reads_its_vectors():
    contract, tokenizer = CONTRACT, None  # forward() takes token rows: no tokenizer runs
    embedder = TritonEncoderEmbedder("127.0.0.1:8000", "encoder", contract, tokenizer, max_batch_size=2)
    embedder.connection = FakeConnection()
    vectors = embedder.forward(np.array([[1, 2], [3, 4], [2, 0]]), np.ones((3, 2), int))
    assert embedder.connection.requests == [("POST", "/v2/models/encoder/infer")]
    assert np.array_equal(vectors.argmax(1), [1, 3, 2])
    assert embedder.name == "triton-encoder://127.0.0.1:8000/encoder"
    assert [list(b) for b in embedder.policy.batches([3, 3, 3])] == [[0, 1], [2]]  # max_batch_size rows
    embedder.connection = FakeConnection(status=400)
    with pytest.raises(MoaiError, match="Triton 400: .*model not ready"):
        embedder.forward(np.array([[1]]), np.array([[1]]))
    with pytest.raises(MoaiError, match="expected HOST:PORT"):
        TritonEncoderEmbedder("127.0.0.1", "encoder", contract, tokenizer, max_batch_size=2)
