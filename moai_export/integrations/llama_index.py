"""A LlamaIndex embedding model from a moai-export gateway: query embeddings embed as queries (the
model's instruction applied), text embeddings (what an index stores) as documents.

    from moai_export.integrations.llama_index import MoaiGatewayEmbedding
    embed_model = MoaiGatewayEmbedding(base_url="http://127.0.0.1:8080/v1", model_name="moai_embedding")
"""

from __future__ import annotations

import asyncio

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr

from .gateway_client import GatewayClient

# LlamaIndex's largest batch: the gateway client cuts each at the gateway's own --max-texts
BATCH_LIMIT = 2048


class MoaiGatewayEmbedding(BaseEmbedding):
    base_url: str
    dimensions: int | None = None
    _gateway: GatewayClient = PrivateAttr()

    def __init__(self, base_url: str, model_name: str, *, api_key: str | None = None, dimensions: int | None = None,
                 timeout: float = 120.0, max_retries: int = 2, embed_batch_size: int = BATCH_LIMIT, **kwargs):
        super().__init__(base_url=base_url, model_name=model_name, dimensions=dimensions,
                         embed_batch_size=embed_batch_size, **kwargs)
        # the key lives in the openai client only: LlamaIndex serializes and logs its fields
        self._gateway = GatewayClient(base_url, model_name, api_key=api_key, dimensions=dimensions, timeout=timeout,
                                      max_retries=max_retries)

    @classmethod
    def class_name(cls) -> str:
        return "MoaiGatewayEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._gateway.embed([query], "query")[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._gateway.embed([text], "document")[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._gateway.embed(texts, "document")

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
