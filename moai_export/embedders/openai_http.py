"""An OpenAI-compatible embeddings endpoint (`moai-export gateway`) as an Embedder, so the
gateway joins `verify` and `moai-bench` like every other variant:

    openai-http://HOST:PORT/MODEL[?api_key=KEY&timeout=S]   (or $MOAI_GATEWAY_API_KEY)

The contract, precision and backend come from the gateway's model card (GET /v1/models/MODEL,
which carries the served contract): a gateway in front of vLLM is judged by vLLM's gate, in front
of Triton by Triton's. Texts go out with `input_type` and come back as base64 float32."""

from __future__ import annotations

import base64
import http.client
import json
import os
import threading

import numpy as np

from ..core.addresses import parse_location
from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError
from .base import TextEmbedder

API_KEY_ENV = "MOAI_GATEWAY_API_KEY"


class OpenAIHttpEmbedder(TextEmbedder):
    default_batch_size = 32

    def __init__(self, address: str, model: str, *, api_key: str | None = None, timeout: float = 120.0,
                 name: str | None = None, dims: int | None = None):
        endpoint, model = parse_location(f"{address}/{model}", "openai-http")
        self.host, self.port, self.model, self.timeout = endpoint.host, endpoint.port, model, timeout
        self._api_key = api_key or os.environ.get(API_KEY_ENV)
        self._local = threading.local()  # one keep-alive connection per thread
        card = self._request("GET", f"/v1/models/{model}")
        if "moai_contract" not in card:
            raise MoaiError(f"the gateway at {address} does not know the contract of {model!r} yet "
                            "(is its backend ready? see /health)")
        super().__init__(EmbeddingContract.from_dict(card["moai_contract"]), dims=dims)
        self.precision = card.get("moai_precision", "fp32")
        self.backend_family = card.get("moai_backend", "triton")  # the server behind the gateway: its gate
        self.max_texts = int(card.get("moai_max_texts", self.default_batch_size))  # the gateway's limit
        self.name = name or f"openai-http://{address}/{model}"

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return connection

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body = json.dumps(payload).encode() if payload is not None else None
        for attempt in (1, 2):  # a keep-alive connection the server closed meanwhile: once more, fresh
            connection = self._connection()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                connection.close()
                self._local.connection = None
                if attempt == 2 or isinstance(exc, TimeoutError):
                    raise MoaiError(f"gateway {self.host}:{self.port} is unreachable ({exc})") from None
        try:
            answer = json.loads(data)
        except ValueError:
            raise MoaiError(f"gateway {path}: HTTP {response.status}, not JSON") from None
        if response.status != 200:
            message = (answer.get("error") or {}).get("message", data[:300]) if isinstance(answer, dict) else data[:300]
            raise MoaiError(f"gateway {path}: HTTP {response.status}: {message}")
        return answer

    def _embed(self, texts: list[str], kind: str, batch_size: int | None) -> np.ndarray:
        return super()._embed(texts, kind, min(batch_size or self.default_batch_size, self.max_texts))

    def _embed_texts(self, texts: list[str], kind: str, batch_size: int) -> np.ndarray:
        answer = self._request("POST", "/v1/embeddings", {"model": self.model, "input": texts, "input_type": kind,
                                                          "encoding_format": "base64"})
        items = sorted(answer["data"], key=lambda item: item["index"])
        return np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in items])

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()


def from_spec(location: str, *, name: str, api_key: str | None = None, timeout: float = 120.0,
              dims: int | None = None) -> OpenAIHttpEmbedder:
    endpoint, model = parse_location(location, "openai-http")
    return OpenAIHttpEmbedder(str(endpoint), model, api_key=api_key, timeout=float(timeout), name=name, dims=dims)
