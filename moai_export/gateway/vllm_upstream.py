"""A vLLM server of a `moai-export vllm` directory, as the gateway's upstream (upstream.py).

The contract, the tokenizer and the precision come from that directory (the one the server was
started on, or a copy of it on this machine). vLLM's own /v1/embeddings knows no query/document,
so the gateway tokenizes here by the contract (the query prompt applied once, truncation to
max_tokens with the end token kept last, on the same tokenizer.json the server loaded) and sends
the token ids: vLLM embeds exactly those tokens, usage is vLLM's own count of them, and each
text's length before truncation is known here. vLLM down, restarting or not answering within the
timeout: 503, as for Triton.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np

from ..core.contract import EmbeddingContract
from ..embedders.vllm import weights_precision
from ..model_files.contract_tokenizer import ContractTokenizer
from ..model_files.model_contract import read_contract
from .errors import ApiError, unavailable
from .upstream import Embedded, Upstream, first_line

REQUEST_TEXTS = 64  # texts per vLLM request (several in flight together), as the vLLM Embedder sends


class VllmUpstream(Upstream):
    backend, label = "vllm", "vLLM"

    def __init__(self, url: str, artifact: Path, model: str, *, timeout: float, ready_timeout: float):
        artifact = Path(artifact)
        self.url = self.address = url.rstrip("/")
        self.contract = read_contract(artifact)
        self.tokenizer = ContractTokenizer.from_dir(artifact, self.contract)
        self.model = model
        # the weights' dtype: the server's compute dtype is not reported by vLLM (bf16 compute over
        # fp32 weights is then judged by the stricter fp32 gate, never a looser one)
        self.precision = weights_precision(artifact)
        self.timeout, self.ready_timeout = timeout, ready_timeout
        self.serving = False  # the server was seen serving the model (checked again after a failure)
        self._session = None

    @property
    def session(self):
        if self._session is None:  # created inside the running event loop
            import aiohttp

            self._session = aiohttp.ClientSession()
        return self._session

    async def ready(self) -> bool:
        """vLLM's engine is healthy and the server lists the model."""
        import aiohttp

        limit = aiohttp.ClientTimeout(total=self.ready_timeout)
        try:
            async with self.session.get(f"{self.url}/health", timeout=limit) as health:
                if health.status != 200:
                    return False
            async with self.session.get(f"{self.url}/v1/models", timeout=limit) as listing:
                models = (await listing.json())["data"] if listing.status == 200 else []
        except Exception:  # refused, timed out, not JSON: not ready
            return False
        return any(entry.get("id") == self.model for entry in models)

    async def connect(self) -> EmbeddingContract:
        if not self.serving:
            if not await self.ready():
                raise unavailable(f"vLLM at {self.url} does not serve a ready model {self.model!r}")
            self.serving = True
        return self.contract

    async def embed(self, texts: list[str], kind: str, chunk: int | None = None) -> Embedded:
        await self.connect()
        ids, untruncated = await asyncio.to_thread(self._tokenize, texts, kind)  # Rust, off the event loop
        size = chunk or REQUEST_TEXTS
        parts = await asyncio.gather(*(self._embed_ids(ids[i:i + size]) for i in range(0, len(ids), size)))
        return Embedded(np.concatenate([vectors for vectors, _ in parts]), sum(tokens for _, tokens in parts),
                        untruncated, self.contract.max_tokens)

    def _tokenize(self, texts: list[str], kind: str) -> tuple[list[list[int]], tuple[int, ...]]:
        """Each text's token ids as the contract makes them, and its length before truncation."""
        tokens = self.tokenizer.encode(texts, kind)
        untruncated = tuple(self.tokenizer.count_tokens(text, kind) if cut else len(row)
                            for text, row, cut in zip(texts, tokens.ids, tokens.truncated))
        return [row.tolist() for row in tokens.ids], untruncated

    async def _embed_ids(self, ids: list[list[int]]) -> tuple[np.ndarray, int]:
        """(vectors, vLLM's token count) of one /v1/embeddings request of token ids."""
        import aiohttp

        payload = {"model": self.model, "input": ids, "encoding_format": "float"}
        try:
            async with self.session.post(f"{self.url}/v1/embeddings", json=payload,
                                         timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                status, body = response.status, await response.text()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # refused, reset, timed out
            self.serving = False
            raise unavailable(f"vLLM at {self.url} is unavailable ({first_line(exc)})") from None
        if status != 200:
            if status == 503 or (status >= 500 and not await self.ready()):
                self.serving = False
                raise unavailable(f"vLLM at {self.url} is unavailable (HTTP {status})")
            raise ApiError(502, f"vLLM at {self.url}: HTTP {status}: {body[:300]}", code="upstream_error")
        try:
            answer = json.loads(body)
            data = sorted(answer["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
            tokens = int(answer["usage"]["prompt_tokens"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(502, f"vLLM at {self.url} answered what is not an embeddings list ({exc})",
                           code="upstream_error") from None
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise ApiError(502, f"vLLM returned {len(data)} vectors for {len(ids)} texts", code="upstream_error")
        return vectors, tokens

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
