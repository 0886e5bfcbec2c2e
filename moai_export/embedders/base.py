"""The one interface every variant implements: texts of a kind -> float32 [n, dims]."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from ..contract import EmbeddingContract, check_kind
from ..errors import MoaiError


class Embedder(ABC):
    """Encode texts as "query" or "document" into the contract's vectors.

    Subclasses implement `_encode_batch`; this class validates input, splits it into batches,
    keeps order, and counts what was truncated, so parity and benchmarks treat all alike.
    """

    name: str = "embedder"
    default_batch_size: int = 16

    def __init__(self, contract: EmbeddingContract):
        self.contract = contract
        # texts cut to max_tokens since creation; None where the variant cannot tell (servers)
        self.num_truncated: int | None = 0

    @abstractmethod
    def _encode_batch(self, texts: list[str], kind: str) -> np.ndarray:
        """Embeddings of one batch, [len(texts), dims]."""

    def encode(self, texts: Sequence[str], kind: str = "document", *, batch_size: int | None = None) -> np.ndarray:
        check_kind(kind)
        if isinstance(texts, str):
            raise MoaiError("encode() takes a list of texts, not a single string")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise MoaiError(f"text {i} is {type(text).__name__}, not str")
        batch_size = batch_size or self.default_batch_size
        out = np.empty((len(texts), self.contract.dims), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            vectors = np.asarray(self._encode_batch(chunk, kind), dtype=np.float32)
            if vectors.shape != (len(chunk), self.contract.dims):
                raise MoaiError(
                    f"{self.name} returned shape {vectors.shape}, expected {(len(chunk), self.contract.dims)}"
                )
            out[start : start + len(chunk)] = vectors
        return out

    def close(self) -> None:
        """Release models, sessions or connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
