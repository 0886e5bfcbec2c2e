"""vLLM variants.

vllm:DIR               what serves: a real vLLM server started for the directory exactly as
                       serve/vllm/run.sh starts it (same engine arguments, device and dtype),
                       queried on /v2/embed, so the server's own prompt and truncation are
                       what is measured. The gate of `moai-export vllm` runs this.
vllm-offline:DIR       the offline engine (`LLM(..., runner="pooling").embed`) in a worker
                       process of the vLLM environment; texts are tokenized here by the
                       contract and sent as token ids.
vllm-http://HOST:PORT/MODEL
                       a running OpenAI-compatible server (serve/vllm/run.sh). Default route:
                       Cohere-style /v2/embed with input_type "query" / "document": the server
                       applies the prompt it loaded from the model's sentence-transformers
                       files. route="v1": /v1/embeddings, which knows no query/document, with
                       the prompt added here from the contract.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..core.addresses import parse_location
from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError
from ..launchers.vllm_server import SERVE_FILE, VllmServer, private_tmpdir_env, vllm_venv
from ..model_files.contract_tokenizer import ContractTokenizer
from ..model_files.model_contract import read_contract
from .base import TextEmbedder, TokenEmbedder

WORKER = Path(__file__).resolve().parents[1] / "launchers" / "vllm_worker.py"


class VllmOfflineEmbedder(TokenEmbedder):

    @staticmethod
    def check_runtime() -> Path:
        python = vllm_venv() / "bin" / "python"
        if not python.is_file():
            raise MoaiError(f"vLLM runtime not found ({python}); create it with serve/vllm/setup_env.sh")
        return python

    def __init__(self, directory: Path, *, dtype: str = "float32", start_timeout: float = 300.0,
                 log_path: Path | None = None, name: str | None = None, dims: int | None = None,
                 admission: str = "require"):
        from ..artifacts.admission import require_admitted
        from ..artifacts.kinds import kind_named
        from ..core.batching import FixedCount
        from ..launchers.vllm_server import VLLM_DTYPES

        directory = Path(directory)
        kind = kind_named("vllm-offline")
        self.serving = kind.serving_config("cpu", VLLM_DTYPES.get(dtype, dtype), "offline")
        self.artifact_dir = directory
        self.precision = _gate_precision(directory, self.serving.dtype)
        require_admitted(directory, self.serving, mode=admission, spec=kind.format_spec(directory, dtype=dtype))
        contract = read_contract(directory)
        super().__init__(contract, ContractTokenizer.from_dir(directory, contract), dims=dims, policy=FixedCount(32))
        self.name = name or f"vllm:{directory}"
        serve = json.loads((directory / SERVE_FILE).read_text()) if (directory / SERVE_FILE).is_file() else None
        if serve is None:
            raise MoaiError(f"{directory}: no {SERVE_FILE}; pass a directory written by `moai-export vllm`")
        config = {
            "model": str(directory.resolve()),
            "pooler_config": serve["pooler_config"],
            "dtype": dtype,
            "max_model_len": serve["max_model_len"],
            "kv_cache_memory_bytes": serve["kv_cache_memory_bytes"],
        }
        python = self.check_runtime()
        read_fd, write_fd = os.pipe()
        log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self._tmpdir = Path(tempfile.mkdtemp(prefix="moai-vllm-worker-"))  # removed by close()
        self._process = subprocess.Popen(
            [str(python), str(WORKER), json.dumps(config), str(write_fd)],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
            text=True, start_new_session=True, env=private_tmpdir_env(self._tmpdir),
        )
        os.close(write_fd)
        self._responses = os.fdopen(read_fd, "r")
        self._lock = threading.Lock()
        first = self._read(start_timeout)
        if not first.get("ready"):
            self.close()
            raise MoaiError(first.get("error", "vLLM worker did not start"))

    def _read(self, timeout: float | None = None) -> dict:
        import select

        if timeout is not None:
            ready, _, _ = select.select([self._responses], [], [], timeout)
            if not ready:
                self.close()
                raise MoaiError(f"vLLM worker gave no answer within {timeout:.0f} s (killed)")
        line = self._responses.readline()
        if not line:
            code = self._process.poll()
            raise MoaiError(f"vLLM worker exited (code {code})")
        return json.loads(line)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        token_ids = [row[mask.astype(bool)].tolist() for row, mask in zip(input_ids, attention_mask)]
        with self._lock:
            self._process.stdin.write(json.dumps({"token_ids": token_ids}) + "\n")
            self._process.stdin.flush()
            answer = self._read()
        if "error" in answer:
            raise MoaiError(f"vLLM: {answer['error']}")
        return np.frombuffer(base64.b64decode(answer["embeddings"]), dtype=np.float32).reshape(answer["shape"])

    def close(self) -> None:
        process = getattr(self, "_process", None)
        if process and process.poll() is None:
            try:
                process.stdin.close()
                process.wait(30)
            except (subprocess.TimeoutExpired, OSError):
                os.killpg(process.pid, 9)
                process.wait()
        if getattr(self, "_responses", None):
            self._responses.close()
            self._responses = None
        if getattr(self, "_tmpdir", None):
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


class VllmHttpEmbedder(TextEmbedder):
    """A vLLM server's embeddings endpoints (request size: max 64 texts each)."""

    default_batch_size = 64

    def __init__(self, base_url: str, model: str, *, contract: EmbeddingContract | None = None,
                 route: str = "v2", timeout: float = 120.0, name: str | None = None, dims: int | None = None):
        if route not in ("v1", "v2"):
            raise MoaiError(f"unknown route {route!r}: v2 (/v2/embed, server-side prompt) or v1 (/v1/embeddings)")
        self.base_url = base_url.rstrip("/")
        self.model, self.route, self.timeout = model, route, timeout
        root = self._check_server()
        if contract is None and root and (Path(root) / "moai_contract.json").is_file():
            contract = read_contract(Path(root))  # the served directory is on this machine
        if contract is None:
            raise MoaiError("the vLLM server's model directory is not on this machine: pass its contract "
                            "(vllm-http://HOST:PORT/MODEL?contract=ARTIFACT_DIR)")
        super().__init__(contract, dims=dims)
        self.name = name or f"vllm-http://{base_url}/{model} ({route})"

    def _post(self, path: str, payload: dict) -> dict:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"{self.base_url}{path}", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise MoaiError(f"vLLM {self.base_url}{path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise MoaiError(f"vLLM server at {self.base_url} is unreachable ({exc})") from None

    def _check_server(self) -> str | None:
        """The served model's root directory (vLLM reports it), after checking it is served."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.base_url}/v1/models", timeout=10) as response:
                models = {m["id"]: m for m in json.loads(response.read())["data"]}
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, KeyError) as exc:
            raise MoaiError(f"vLLM server at {self.base_url} is not reachable ({exc})") from None
        if self.model not in models:
            raise MoaiError(f"vLLM server at {self.base_url} serves {sorted(models)}, not {self.model!r}")
        entry = models[self.model]
        # a LoRA module's root is the adapter; its parent names the base model entry
        parent = entry.get("parent")
        return models.get(parent, {}).get("root") if parent else entry.get("root")

    def _embed_texts(self, texts: list[str], kind: str, batch_size: int) -> np.ndarray:
        if self.route == "v2":
            answer = self._post("/v2/embed", {"model": self.model, "texts": texts, "input_type": kind,
                                              "embedding_types": ["float"], "truncate": "END"})
            vectors = answer["embeddings"]["float"]
        else:
            answer = self._post("/v1/embeddings", {"model": self.model, "input": self.contract.apply_prompt(texts, kind),
                                                   "encoding_format": "float", "truncate_prompt_tokens": -1})
            vectors = [item["embedding"] for item in sorted(answer["data"], key=lambda item: item["index"])]
        return np.asarray(vectors, dtype=np.float32)


class VllmServedEmbedder(VllmHttpEmbedder):
    """A vLLM server of its own for `directory`, launched as serve/vllm/run.sh launches it (on a
    free loopback port), queried on /v2/embed; stopped on close()."""

    def __init__(self, directory: Path, *, device: str | None = None, dtype: str | None = None,
                 start_timeout: float = 400.0, log_path: Path | None = None, name: str | None = None,
                 dims: int | None = None, admission: str = "require"):
        from ..artifacts.admission import require_admitted
        from ..artifacts.kinds import kind_named
        from ..launchers.process import LaunchError, free_ports

        directory = Path(directory)
        self.server = VllmServer(directory, port=free_ports(1)[0], dtype=dtype, device=device, log_path=log_path)
        try:
            self.serving = self.server.serving_config()
            self.artifact_dir = directory
            require_admitted(directory, self.serving, mode=admission,
                             spec=kind_named("vllm").format_spec(directory, device=self.serving.device))
            self.server.start(start_timeout)
        except LaunchError as exc:
            raise MoaiError(str(exc)) from None
        try:
            super().__init__(self.server.base_url, self.server.serve_args()["served_model_name"],
                             contract=read_contract(directory), route="v2",
                             name=name or f"vllm:{directory} ({self.serving.describe()})", dims=dims)
        except BaseException:
            self.server.stop()
            raise
        self.precision = _gate_precision(directory, self.serving.dtype)

    def close(self) -> None:
        self.server.stop()


def served_from_spec(location: str, *, name: str, device: str | None = None, dtype: str | None = None,
                     dims: int | None = None, admission: str = "require",
                     log_path: str | None = None) -> VllmServedEmbedder:
    return VllmServedEmbedder(Path(location), device=device, dtype=dtype, name=name, dims=dims, admission=admission,
                              log_path=Path(log_path) if log_path else None)


def offline_from_spec(location: str, *, name: str, dtype: str = "float32", dims: int | None = None,
                      admission: str = "require") -> VllmOfflineEmbedder:
    return VllmOfflineEmbedder(Path(location), dtype=dtype, name=name, dims=dims, admission=admission)


def http_from_spec(location: str, *, name: str, route: str = "v2", contract: str | None = None,
                   dims: int | None = None, timeout: float = 120.0) -> VllmHttpEmbedder:
    endpoint, model = parse_location(location, "vllm-http")
    return VllmHttpEmbedder(f"http://{endpoint}", model, contract=read_contract(Path(contract)) if contract else None,
                            route=route, name=name, dims=dims, timeout=timeout)


def gate_precision(weights_dtype: str, compute_dtype: str) -> str:
    """The coarser of the saved weights and the compute dtype picks the gate."""
    return compute_dtype if compute_dtype != "fp32" else weights_dtype


def weights_precision(directory: Path) -> str:
    """The dtype a `moai-export vllm` directory's weights were written in (its manifest)."""
    from ..artifacts.admission import read_manifest

    return ((read_manifest(directory) or {}).get("options") or {}).get("dtype", "fp32")


def _gate_precision(directory: Path, compute_dtype: str) -> str:
    return gate_precision(weights_precision(directory), compute_dtype)
