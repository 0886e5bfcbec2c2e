"""The one interface every variant implements: texts of a kind -> float32 [n, dims].

    Embedder         validates the texts (one empty-text policy for every variant), checks the
                     vectors that come back (shape, no zero vector), applies Matryoshka `dims`
    TokenEmbedder    in-process variants: tokenizes ONCE with the contract tokenizer, lets a
                     batching policy cut forward passes, restores input order; a variant
                     implements only `forward(input_ids, attention_mask)`
    TextEmbedder     remote variants whose server tokenizes (Triton, vLLM HTTP, gateway):
                     texts go out in requests of `batch_size`

No per-call state lives on an Embedder: one instance may serve many threads.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from ..core.batching import BatchPolicy, FixedCount, describe_policy
from ..core.contract import EmbeddingContract, check_dimensions, check_kind, truncate_dimensions
from ..core.errors import MoaiError
from ..core.input_rules import check_texts


def check_vectors(vectors: np.ndarray, expected: tuple[int, int], name: str) -> np.ndarray:
    """What came back: the right shape, and no zero vector (a zero vector is never a valid
    embedding; returning it with success would rank it silently). NaN/inf pass through: the
    parity gate names them (an fp16 overflow)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape != expected:
        raise MoaiError(f"{name} returned shape {vectors.shape}, expected {expected}")
    if len(vectors):
        norms = np.linalg.norm(vectors, axis=1)
        zero = np.flatnonzero(norms == 0)
        if len(zero):
            raise MoaiError(f"{name}: text {int(zero[0])} embedded to a zero vector ({len(zero)} of {len(vectors)})")
    return vectors


class Embedder(ABC):
    """Encode texts as "query" or "document" into the contract's vectors.

    `dims` (Matryoshka): return the first `dims` components, renormalized when the contract
    normalizes. Qwen3-Embedding is trained for 32..1024.
    """

    name: str = "embedder"
    precision: str = "fp32"  # what it computes in: picks its parity gate
    serving = None  # admission.ServingConfig of a local artifact (what `verify` admits), else None
    artifact_dir = None  # the directory whose manifest records that admission

    def __init__(self, contract: EmbeddingContract, *, dims: int | None = None):
        self.contract = contract
        self.dims = check_dimensions(dims, contract) if dims is not None else contract.dims
        # texts cut to max_tokens since creation; None where the variant cannot tell (servers)
        self.num_truncated: int | None = 0
        self._count_lock = threading.Lock()

    def encode(self, texts: Sequence[str], kind: str, *, batch_size: int | None = None) -> np.ndarray:
        """Vectors of `texts` as `kind` ("query" or "document": no default, since a query embedded
        as a document loses its instruction and still looks like a good vector)."""
        check_kind(kind)
        texts = check_texts(texts)
        if batch_size is not None and batch_size < 1:
            raise MoaiError(f"batch size must be at least 1, not {batch_size}")
        vectors = check_vectors(self._embed(texts, kind, batch_size), (len(texts), self.contract.dims), self.name)
        return truncate_dimensions(vectors, self.dims, self.contract.normalize)

    @abstractmethod
    def _embed(self, texts: list[str], kind: str, batch_size: int | None) -> np.ndarray:
        """Full-width vectors of `texts` in input order, [len(texts), contract.dims]."""

    def _count_truncated(self, n: int) -> None:
        if n and self.num_truncated is not None:
            with self._count_lock:
                self.num_truncated += n

    def close(self) -> None:
        """Release models, sessions, connections or servers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class TokenEmbedder(Embedder):
    """In-process variants. `policy` batches when the caller gives no batch size (the onnx and
    torch variants serve with core.batching.serving_budget of their device)."""

    policy: BatchPolicy = FixedCount(16)

    def __init__(self, contract: EmbeddingContract, tokenizer, *, dims: int | None = None,
                 policy: BatchPolicy | None = None):
        super().__init__(contract, dims=dims)
        self.tokenizer = tokenizer
        if policy is not None:
            self.policy = policy

    @property
    def batching(self) -> dict:
        """The batching this variant serves (and is gated) with."""
        return describe_policy(self.policy)

    @abstractmethod
    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Pooled (and normalized) vectors of one padded token batch, [rows, contract.dims]."""

    def _embed(self, texts: list[str], kind: str, batch_size: int | None) -> np.ndarray:
        tokens = self.tokenizer.encode(texts, kind)
        self._count_truncated(tokens.num_truncated)
        policy = FixedCount(batch_size) if batch_size else self.policy
        out = np.empty((len(texts), self.contract.dims), dtype=np.float32)
        for positions in policy.batches(tokens.lengths):
            batch = tokens.padded(positions)
            out[positions] = check_vectors(self.forward(batch.input_ids, batch.attention_mask),
                                           (len(positions), self.contract.dims), self.name)
        return out


class TextEmbedder(Embedder):
    """Remote variants whose server applies prompt, truncation and pooling."""

    default_batch_size: int = 16

    def __init__(self, contract: EmbeddingContract, *, dims: int | None = None):
        super().__init__(contract, dims=dims)
        self.num_truncated = None  # the server does not report truncation

    @abstractmethod
    def _embed_texts(self, texts: list[str], kind: str, batch_size: int) -> np.ndarray:
        """Vectors of one request's texts."""

    def _embed(self, texts: list[str], kind: str, batch_size: int | None) -> np.ndarray:
        size = batch_size or self.default_batch_size
        out = np.empty((len(texts), self.contract.dims), dtype=np.float32)
        for start in range(0, len(texts), size):
            chunk = texts[start:start + size]
            out[start:start + len(chunk)] = check_vectors(self._embed_texts(chunk, kind, size),
                                                          (len(chunk), self.contract.dims), self.name)
        return out
