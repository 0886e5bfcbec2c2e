"""The gateway as the adapters call it: the official `openai` client, every request with its kind
(`input_type`), cut at the gateway's limit of texts per request, vectors as base64 float32."""

from __future__ import annotations

import base64
import os
from typing import Sequence

import numpy as np

from ..core.contract import check_kind
from ..embedders.openai_http import API_KEY_ENV
from ..gateway.config import GatewayConfig

OPEN_GATEWAY_KEY = "none"  # what the openai client sends to a gateway without keys (it requires one)


class GatewayClient:
    """Embeds texts of one kind through `POST {base_url}/embeddings` of a moai-export gateway.

    `base_url` is what the openai client takes (http://HOST:PORT/v1); `api_key` defaults to
    $MOAI_GATEWAY_API_KEY; `dimensions` asks for Matryoshka vectors (the first k components,
    renormalized by the gateway)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, dimensions: int | None = None,
                 timeout: float = 120.0, max_retries: int = 2):
        import openai

        self.model = model
        self.dimensions = dimensions
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get(API_KEY_ENV) or OPEN_GATEWAY_KEY,
                                    timeout=timeout, max_retries=max_retries)
        self._max_texts: int | None = None

    @property
    def max_texts(self) -> int:
        """Texts per request: the gateway's --max-texts, read once from its model card."""
        if self._max_texts is None:
            card = self.client.models.retrieve(self.model)
            self._max_texts = int((card.model_extra or {}).get("moai_max_texts") or GatewayConfig.max_texts)
        return self._max_texts

    def embed(self, texts: Sequence[str], kind: str) -> list[list[float]]:
        """One vector per text, in order; `kind` is "query" or "document"."""
        check_kind(kind)
        texts = list(texts)
        if not texts:
            return []
        size = self.max_texts
        options = {"dimensions": self.dimensions} if self.dimensions is not None else {}
        vectors: list[list[float]] = []
        for start in range(0, len(texts), size):
            answer = self.client.embeddings.create(model=self.model, input=texts[start:start + size],
                                                   encoding_format="base64", extra_body={"input_type": kind},
                                                   **options)
            for item in sorted(answer.data, key=lambda item: item.index):
                vectors.append(np.frombuffer(base64.b64decode(item.embedding), dtype="<f4").tolist())
        return vectors
