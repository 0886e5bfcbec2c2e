"""Adapters that put a `moai-export gateway` behind the embedding interfaces of LangChain and
LlamaIndex (the optional extra: `pip install 'moai-export[integrations]'`).

    gateway_client.py   GatewayClient: the official `openai` client, one kind per call, batches at
                        the gateway's --max-texts, strings only, base64 float32 vectors
    langchain.py        MoaiGatewayEmbeddings (langchain_core Embeddings)
    llama_index.py      MoaiGatewayEmbedding (llama_index.core BaseEmbedding)

Their stock OpenAI classes cannot say query or document (the gateway refuses them for it), and
LangChain's sends token arrays by default: these send `input_type` "query" for a query and
"document" for a text to index, as the model was trained. Each module imports its framework only
when it is imported itself.
"""
