"""An OpenAI-compatible embeddings gateway (`moai-export gateway`) in front of the Triton ensemble
or a vLLM server: one front door, the same policies for both.

    config.py    GatewayConfig: upstream, limits, keys, timeouts
    errors.py    ApiError and OpenAI's error JSON (every error reply has that shape)
    auth.py      API keys (flag / environment / file), Bearer, constant-time compare
    upstream.py  what the gateway needs of its backend (Upstream: readiness, contract, embed -> Embedded)
    triton_upstream.py  Triton over async gRPC, a timeout on every call
    vllm_upstream.py    vLLM over HTTP, tokenized here by the contract of its `moai-export vllm` directory
    probe.py     readiness: a real embedding end to end
    metrics.py   Prometheus metrics of one gateway
    app.py       the Starlette app: /v1/embeddings, /v1/models, /health, /metrics
    server.py    uvicorn around it (what the CLI and serve/gateway/run.sh start)
"""

from .config import GatewayConfig

__all__ = ["GatewayConfig"]
