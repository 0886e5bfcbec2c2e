"""Triton variant: raw text over HTTP or gRPC to the ensemble written by `moai-export triton`.
Tokenization, the query prompt, truncation and pooling all happen server-side; the client
only splits inputs into requests of at most the model's max batch size and sends them
concurrently. The contract comes from the server (the ensemble's config parameters)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.addresses import parse_location
from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError
from ..model_files.triton_config import (
    CONFIG_FILE,
    CONTRACT_PARAMETER,
    PRECISION_PARAMETER,
    REPOSITORY_ID_PARAMETER,
    TOKENS,
    UNTRUNCATED_TOKENS,
    ModelConfigFields,
    read_model_config,
)
from .base import TextEmbedder

PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class ServedEnsemble:
    """What an ensemble written by `moai-export triton` declares in its config parameters: read
    the same way by this Embedder and by the gateway's async upstream."""

    contract: EmbeddingContract
    precision: str
    max_batch_size: int
    repository_id: str | None
    counts_tokens: bool  # declares TOKENS (each text's token count), read by the gateway for usage
    reports_truncation: bool  # declares UNTRUNCATED_TOKENS, read by the gateway to report cut texts

    @classmethod
    def from_config(cls, config: dict, where: str) -> "ServedEnsemble":
        """From the server's model config (JSON)."""
        fields = ModelConfigFields.from_json(config)
        try:
            contract = EmbeddingContract.from_dict(json.loads(fields.parameters[CONTRACT_PARAMETER]))
        except (KeyError, ValueError):
            raise MoaiError(f"{where} carries no moai contract; was it written by `moai-export triton`?") from None
        return cls(contract, fields.parameters.get(PRECISION_PARAMETER, "fp32"), fields.max_batch_size or 1,
                   fields.parameters.get(REPOSITORY_ID_PARAMETER), TOKENS in fields.outputs,
                   UNTRUNCATED_TOKENS in fields.outputs)


def ensemble_inputs(client, texts: list[str], kind: str) -> list:
    """The ensemble's TEXT and KIND inputs; `client` is tritonclient.http, .grpc or .grpc.aio."""
    text = client.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=object))
    kinds = client.InferInput("KIND", [len(texts), 1], "BYTES")
    kinds.set_data_from_numpy(np.array([[kind.encode("utf-8")]] * len(texts), dtype=object))
    return [text, kinds]


class TritonEmbedder(TextEmbedder):
    def __init__(self, url: str, model: str, *, protocol: str = "http", timeout: float = 60.0,
                 ready_timeout: float = 30.0, concurrency: int = 4, name: str | None = None,
                 dims: int | None = None):
        if protocol not in PROTOCOLS:
            raise MoaiError(f"unknown protocol {protocol!r}: expected http or grpc")
        self.protocol, self.url, self.model = protocol, url, model
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        # tritonclient.http is gevent-based and a client cannot cross threads: one per thread.
        self._local = threading.local()
        self._clients: list = []
        self._wait_ready(ready_timeout)
        served = ServedEnsemble.from_config(self._model_config(), f"model {model!r} at {url}")
        super().__init__(served.contract, dims=dims)
        self.precision = served.precision
        self.repository_id = served.repository_id
        self.max_batch_size = served.max_batch_size
        self.default_batch_size = self.max_batch_size
        self.name = name or f"triton-{protocol}://{url}/{model}"
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
        inputs = ensemble_inputs(client, texts, kind)
        try:
            if self.protocol == "http":
                result = self.client.infer(self.model, inputs, timeout=int(self.timeout * 1e6))
            else:
                result = self.client.infer(self.model, inputs, client_timeout=self.timeout)
        except Exception as exc:
            raise MoaiError(f"Triton {self.url}/{self.model}: {str(exc).splitlines()[0]}") from None
        return result.as_numpy("EMBEDDING")

    def _embed_texts(self, texts: list[str], kind: str, batch_size: int) -> np.ndarray:
        return self._request(texts, kind)

    def _embed(self, texts: list[str], kind: str, batch_size: int | None) -> np.ndarray:
        # Requests of at most max_batch_size texts, `concurrency` of them in flight together
        # (the server's dynamic batcher may merge them again). The request size is local to
        # this call: one Embedder may serve many threads.
        size = min(batch_size or self.max_batch_size, self.max_batch_size)
        chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
        if not chunks:
            return np.empty((0, self.contract.dims), dtype=np.float32)
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


class TritonRepositoryEmbedder(TritonEmbedder):
    """A local tritonserver of its own for a model repository (free loopback ports), queried
    over gRPC; stopped on close(). What `moai-export triton` verifies and `verify REPO` runs."""

    def __init__(self, repository: Path, model: str | None = None, *, name: str | None = None,
                 dims: int | None = None, start_timeout: float = 180.0, log_path: Path | None = None,
                 admission: str = "require"):
        from ..launchers.process import LaunchError
        from ..launchers.triton_server import TritonServer, free_ports

        repository = Path(repository)
        model = model or ensemble_name(repository)
        from ..artifacts.triton_admission import check_repository_admitted

        check_repository_admitted(repository, model, mode=admission)
        http, grpc, metrics = free_ports(3)
        self.server = TritonServer(repository, http, grpc, metrics, log_path=log_path,
                                   extra_args=["--model-control-mode=explicit", f"--load-model={model}"])
        try:
            self.server.start(start_timeout)
        except LaunchError as exc:
            raise MoaiError(f"tritonserver did not serve {repository}: {exc}") from None
        try:
            super().__init__(self.server.grpc_url, model, protocol="grpc",
                             name=name or f"triton:{repository} ({model})", dims=dims)
        except BaseException:
            self.server.stop()
            raise
        from ..artifacts.triton_admission import recorded_repository_config

        self.serving = recorded_repository_config(repository / model, self.precision)
        self.artifact_dir = repository / model

    def close(self) -> None:
        super().close()
        self.server.stop()


def ensemble_name(repository: Path) -> str:
    """The one ensemble in a repository (written by `moai-export triton`), or a clear error."""
    names = sorted(p.parent.name for p in Path(repository).glob(f"*/{CONFIG_FILE}")
                   if read_model_config(p.parent).is_ensemble)
    if len(names) != 1:
        raise MoaiError(f"{repository}: {'no' if not names else len(names)} ensembles"
                        f"{' (' + ', '.join(names) + ')' if names else ''}; name one with ?model=NAME")
    return names[0]


def http_from_spec(location: str, *, name: str, **options) -> TritonEmbedder:
    return _remote(location, "http", name, options)


def grpc_from_spec(location: str, *, name: str, **options) -> TritonEmbedder:
    return _remote(location, "grpc", name, options)


def _remote(location: str, protocol: str, name: str, options: dict) -> TritonEmbedder:
    """`?repository=DIR`: the repository this server serves (checked by its id), so that `verify`
    can record the configuration it passed in there (e.g. NVIDIA's container on a GPU)."""
    endpoint, model = parse_location(location, f"triton-{protocol}")
    address = str(endpoint)
    repository = options.pop("repository", None)
    embedder = TritonEmbedder(address, model, protocol=protocol, name=name, **options)
    if repository:
        from ..artifacts.admission import repository_id
        from ..artifacts.triton_admission import recorded_repository_config

        ensemble_dir = Path(repository) / model
        served_here = (ensemble_dir / CONFIG_FILE).is_file() and embedder.repository_id == repository_id(ensemble_dir)
        if not served_here:
            embedder.close()
            raise MoaiError(f"the server at {address} does not serve {ensemble_dir} (another repository id)")
        embedder.serving = recorded_repository_config(ensemble_dir, embedder.precision)
        embedder.artifact_dir = ensemble_dir
    return embedder


def repository_from_spec(location: str, *, name: str, model: str | None = None, dims: int | None = None,
                         admission: str = "require", log_path: str | None = None) -> TritonRepositoryEmbedder:
    return TritonRepositoryEmbedder(Path(location), model, name=name, dims=dims, admission=admission,
                                    log_path=Path(log_path) if log_path else None)
