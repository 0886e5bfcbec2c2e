"""Triton variant: raw text over HTTP or gRPC to the ensemble written by `moai-export triton`.
Tokenization, the query prompt, truncation and pooling all happen server-side; the client
only splits inputs into requests of at most the model's max batch size and sends them
concurrently. The contract comes from the server (the ensemble's config parameters)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..contract import EmbeddingContract
from ..errors import MoaiError
from .base import Embedder

PROTOCOLS = ("http", "grpc")


class TritonEmbedder(Embedder):
    def __init__(self, url: str, model: str, *, protocol: str = "http", timeout: float = 60.0,
                 ready_timeout: float = 30.0, concurrency: int = 4, name: str | None = None):
        if protocol not in PROTOCOLS:
            raise MoaiError(f"unknown protocol {protocol!r}: expected http or grpc")
        self.protocol, self.url, self.model = protocol, url, model
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        # tritonclient.http is gevent-based and a client cannot cross threads: one per thread.
        self._local = threading.local()
        self._clients: list = []
        self._wait_ready(ready_timeout)
        config = self._model_config()
        try:
            contract = EmbeddingContract.from_dict(json.loads(config["parameters"]["moai_contract"]["string_value"]))
        except (KeyError, ValueError):
            raise MoaiError(f"model {model!r} at {url} carries no moai contract; was it written by `moai-export triton`?") from None
        super().__init__(contract)
        self.precision = config["parameters"].get("moai_precision", {}).get("string_value", "fp32")
        self.max_batch_size = int(config.get("max_batch_size") or 1)
        self.default_batch_size = self.max_batch_size
        self.num_truncated = None  # the server does not report truncation
        self.name = name or f"triton-{protocol}://{url}/{model}"
        self._request_size = self.max_batch_size
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="triton-client")

    @property
    def client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
            self._clients.append(client)
        return client

    def _new_client(self):
        if self.protocol == "http":
            import tritonclient.http as client

            return client.InferenceServerClient(self.url, connection_timeout=self.timeout,
                                                network_timeout=self.timeout)
        import tritonclient.grpc as client

        return client.InferenceServerClient(self.url)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            try:
                if self.client.is_server_ready():
                    break
            except Exception as exc:  # connection refused etc.
                last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            time.sleep(0.2)
        else:
            raise MoaiError(f"Triton server at {self.url} ({self.protocol}) is not ready after {timeout:.0f} s: {last_error}")
        try:
            ready = self.client.is_model_ready(self.model)
        except Exception as exc:
            raise MoaiError(f"Triton server at {self.url}: cannot query model {self.model!r} ({exc})") from None
        if not ready:
            raise MoaiError(f"Triton server at {self.url} has no ready model {self.model!r}")

    def _model_config(self) -> dict:
        if self.protocol == "http":
            return self.client.get_model_config(self.model)
        return self.client.get_model_config(self.model, as_json=True)["config"]

    def _request(self, texts: list[str], kind: str) -> np.ndarray:
        if self.protocol == "http":
            import tritonclient.http as client
        else:
            import tritonclient.grpc as client
        text = client.InferInput("TEXT", [len(texts), 1], "BYTES")
        text.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=object))
        kinds = client.InferInput("KIND", [len(texts), 1], "BYTES")
        kinds.set_data_from_numpy(np.array([[kind.encode("utf-8")]] * len(texts), dtype=object))
        try:
            if self.protocol == "http":
                result = self.client.infer(self.model, [text, kinds], timeout=int(self.timeout * 1e6))
            else:
                result = self.client.infer(self.model, [text, kinds], client_timeout=self.timeout)
        except Exception as exc:
            raise MoaiError(f"Triton {self.url}/{self.model}: {str(exc).splitlines()[0]}") from None
        return result.as_numpy("EMBEDDING")

    def encode(self, texts, kind="document", *, batch_size=None):
        # Requests of at most max_batch_size texts, `concurrency` of them in flight together
        # (the server's dynamic batcher may merge them again).
        self._request_size = min(batch_size or self.max_batch_size, self.max_batch_size)
        return super().encode(texts, kind, batch_size=self._request_size * self.concurrency)

    def _encode_batch(self, texts: list[str], kind: str) -> np.ndarray:
        size = self._request_size
        chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
        return np.concatenate(list(self._pool.map(lambda chunk: self._request(chunk, kind), chunks)))

    def close(self) -> None:
        if getattr(self, "_pool", None):
            self._pool.shutdown(wait=True)
            self._pool = None
        for client in getattr(self, "_clients", []):
            try:
                client.close()
            except Exception:  # closing from another thread: the connection goes with the process
                pass
        self._clients = []
