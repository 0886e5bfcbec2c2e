"""LangChain embeddings from a moai-export gateway: `embed_query` embeds as a query (the model's
instruction applied), `embed_documents` as documents.

    from moai_export.integrations.langchain import MoaiGatewayEmbeddings
    embeddings = MoaiGatewayEmbeddings(base_url="http://127.0.0.1:8080/v1", model="moai_embedding")
"""

from __future__ import annotations

from langchain_core.embeddings import Embeddings

from .gateway_client import GatewayClient


class MoaiGatewayEmbeddings(Embeddings):
    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, dimensions: int | None = None,
                 timeout: float = 120.0, max_retries: int = 2):
        self.gateway = GatewayClient(base_url, model, api_key=api_key, dimensions=dimensions, timeout=timeout,
                                     max_retries=max_retries)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.gateway.embed(texts, "document")

    def embed_query(self, text: str) -> list[float]:
        return self.gateway.embed([text], "query")[0]
