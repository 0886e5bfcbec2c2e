"""What a model directory promises: its own contract file (every artifact of this toolkit),
else the contract derived from its sentence-transformers files. Kept apart from contract.py
so the contract stays free of the format readers (no import cycle)."""

from __future__ import annotations

from pathlib import Path

from ..core.contract import CONTRACT_FILE, EmbeddingContract
from .sentence_transformers_format import derive_contract


def read_contract(directory: Path, *, max_tokens: int | None = None) -> EmbeddingContract:
    """The contract of a model directory: its own `moai_contract.json` when it has one (every
    artifact of this toolkit), else derived from the sentence-transformers files."""
    directory = Path(directory)
    if (directory / CONTRACT_FILE).is_file():
        contract = EmbeddingContract.load(directory)
    else:
        contract = derive_contract(directory)
    if max_tokens is not None:
        contract = contract.with_max_tokens(max_tokens)
    return contract
