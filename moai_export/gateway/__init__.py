"""An OpenAI-compatible embeddings gateway in front of the Triton ensemble (`moai-export gateway`).

    config.py    GatewayConfig: upstream, limits, keys, timeouts
    errors.py    ApiError and OpenAI's error JSON (every error reply has that shape)
    auth.py      API keys (flag / environment / file), Bearer, constant-time compare
    upstream.py  Triton over async gRPC: readiness, contract, embed with a timeout on every call
    metrics.py   Prometheus metrics of one gateway
    app.py       the Starlette app: /v1/embeddings, /v1/models, /health, /metrics
    server.py    uvicorn around it (what the CLI and serve/gateway/run.sh start)
"""

from .config import GatewayConfig

__all__ = ["GatewayConfig"]
