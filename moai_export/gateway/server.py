"""Run the gateway with uvicorn (SIGTERM / Ctrl-C: stop accepting, finish what is in flight)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import MoaiError
from .config import GatewayConfig


def tokenizer_file(path: Path, model: str) -> Path:
    """tokenizer.json given directly, in a directory, or in a Triton repository's tokenizer model."""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / "tokenizer.json",
                                                 *sorted(path.glob(f"{model}_tokenizer/*/tokenizer.json")),
                                                 *sorted(path.glob("*/*/tokenizer.json"))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MoaiError(f"--tokenizer {path}: no tokenizer.json there (give the artifact directory, the Triton "
                    "repository, or the file)")


def tokenizer_factory(config: GatewayConfig):
    """contract -> ContractTokenizer over the file (loaded once the contract is known from Triton)."""
    import tokenizers

    from ..inputs import ContractTokenizer

    path = tokenizer_file(config.tokenizer, config.model)
    tokenizer = tokenizers.Tokenizer.from_file(str(path))  # fail at start, not at the first request
    return lambda contract: ContractTokenizer(tokenizer, contract, source=str(path))


def build_app(config: GatewayConfig):
    from .app import create_app

    return create_app(config.validate(), tokenizer_factory(config))


def serve(config: GatewayConfig, *, log_level: str = "info") -> None:
    import uvicorn

    app = build_app(config)
    logging.getLogger("moai_export.gateway").info("serving %s", config.name)
    # access log off: request lines are in /metrics; headers (keys) are never logged.
    # Keep-alive longer than clients' own idle timeouts (aiohttp 15 s, httpx 5 s): a server that
    # closes an idle connection first races a client sending on it (a request lost in transit).
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=10, timeout_keep_alive=75, backlog=2048)
