"""Plain sentence-transformers `encode_query` / `encode_document`: what a user would run
without this toolkit, and the proof that a written directory loads and behaves as promised."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import read_contract
from .base import Embedder


class SentenceTransformerEmbedder(Embedder):
    def __init__(self, directory: Path, *, device: str = "cpu", name: str | None = None):
        from sentence_transformers import SentenceTransformer

        super().__init__(read_contract(Path(directory)))
        self.model = SentenceTransformer(str(directory), device=device)
        self.name = name or f"st:{directory}"

    def _encode_batch(self, texts: list[str], kind: str) -> np.ndarray:
        encode = self.model.encode_query if kind == "query" else self.model.encode_document
        return encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)

    def close(self) -> None:
        self.model = None
