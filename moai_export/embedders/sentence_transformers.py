"""Plain sentence-transformers `encode_query` / `encode_document`: what a user would run
without this toolkit, and the proof that a written directory loads and behaves as promised."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..model_files.model_contract import read_contract
from .base import Embedder


class SentenceTransformerEmbedder(Embedder):
    """sentence-transformers tokenizes and batches by itself: this variant is the check that
    a written directory behaves as promised for a user of the library, not ours."""

    def __init__(self, directory: Path, *, device: str = "cpu", name: str | None = None, dims: int | None = None,
                 admission: str = "require"):
        from sentence_transformers import SentenceTransformer

        from ..artifacts.admission import require_admitted
        from ..artifacts.kinds import kind_named
        from .torch_model import check_device, manifest_dtype

        super().__init__(read_contract(Path(directory)), dims=dims)
        check_device(device)
        self.precision = manifest_dtype(Path(directory))
        kind = kind_named("st")
        self.serving = kind.serving_config(device, self.precision)
        self.artifact_dir = Path(directory)
        require_admitted(Path(directory), self.serving, mode=admission, spec=kind.format_spec(directory, device=device))
        self.model = SentenceTransformer(str(directory), device=device)
        self.name = name or f"st:{directory}"

    def _embed(self, texts: list[str], kind: str, batch_size: int | None) -> np.ndarray:
        encode = self.model.encode_query if kind == "query" else self.model.encode_document
        return encode(texts, batch_size=batch_size or 16, convert_to_numpy=True, show_progress_bar=False)

    def close(self) -> None:
        self.model = None


def from_spec(location: str, *, name: str, device: str = "cpu", dims: int | None = None,
              admission: str = "require") -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(Path(location), device=device, name=name, dims=dims, admission=admission)
