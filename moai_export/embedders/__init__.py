"""Embedders: one interface (`base.Embedder`), many variants, one per module. Which spec names
which variant is the registry's business (`moai_export.artifacts.kinds`); `load_embedder(spec)` builds
one from a string, so the CLI, parity and benchmarks name variants alike."""

from __future__ import annotations

from ..artifacts.kinds import load_embedder, parse_spec
from .base import Embedder, TextEmbedder, TokenEmbedder

__all__ = ["Embedder", "TextEmbedder", "TokenEmbedder", "load_embedder", "parse_spec"]
