"""A Triton encoder model asked directly (the ensemble's second step, without its tokenizer
model): the client tokenizes with the contract and sends padded token rows over Triton's HTTP
API with binary tensors, on one keep-alive connection.

Standard library only (no tritonclient): it runs where tritonclient's grpcio / protobuf /
rapidjson pins cannot be installed, e.g. a GPU image that only carries the source tree. The
Embedder of the whole ensemble, raw text in, is embedders/triton.py.
"""

from __future__ import annotations

import http.client
import json

import numpy as np

from ..core.addresses import parse_host_port
from ..core.batching import FixedCount
from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError
from ..model_files.contract_tokenizer import ContractTokenizer
from .base import TokenEmbedder

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"
HEADER_LENGTH = "Inference-Header-Content-Length"  # the JSON part's bytes; the binary tensors follow it


def infer_request(arrays: dict[str, np.ndarray], output: str = OUTPUT) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an inference request: JSON header, then each INT64 tensor's bytes, in order."""
    tensors = {name: np.ascontiguousarray(a, dtype="<i8") for name, a in arrays.items()}
    header = json.dumps({
        "inputs": [{"name": name, "shape": list(a.shape), "datatype": "INT64",
                    "parameters": {"binary_data_size": a.nbytes}} for name, a in tensors.items()],
        "outputs": [{"name": output, "parameters": {"binary_data": True}}]}).encode()
    body = header + b"".join(a.tobytes() for a in tensors.values())
    return body, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def infer_response(body: bytes, header_length: str | None, rows: int) -> np.ndarray:
    """The one FP32 output of an answer, [rows, dims]: the bytes after its JSON header."""
    start = int(header_length) if header_length else len(body)
    return np.frombuffer(body[start:], dtype="<f4").reshape(rows, -1)


class TritonEncoderEmbedder(TokenEmbedder):
    """Token batches of at most `max_batch_size` rows to encoder model `model` at HOST:PORT (HTTP)."""

    def __init__(self, address: str, model: str, contract: EmbeddingContract, tokenizer: ContractTokenizer, *,
                 max_batch_size: int, precision: str = "fp32", name: str | None = None, timeout: float = 60.0):
        super().__init__(contract, tokenizer, policy=FixedCount(max_batch_size))
        endpoint = parse_host_port(address, "Triton HTTP address")
        self.path = f"/v2/models/{model}/infer"
        self.connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
        self.name = name or f"triton-encoder://{endpoint}/{model}"
        self.precision = precision

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        body, headers = infer_request(dict(zip(INPUTS, (input_ids, attention_mask))))
        self.connection.request("POST", self.path, body=body, headers=headers)
        response = self.connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise MoaiError(f"Triton {response.status}: {answer[:300]!r}")
        return infer_response(answer, response.getheader(HEADER_LENGTH), len(input_ids))

    def close(self) -> None:
        self.connection.close()
