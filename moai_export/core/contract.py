"""The embedding contract: everything that turns texts into the vector a model promises.

Read once from a model directory, written beside every artifact this toolkit makes
(`moai_contract.json`), and read back by every later stage, so an ONNX graph, a Triton
tokenizer model and a vLLM pooler cannot disagree on pooling, prompts or the end token.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from .errors import MoaiError
from .input_rules import KINDS  # the text kinds, shared with the Triton tokenizer model

CONTRACT_FILE = "moai_contract.json"
CONTRACT_FORMAT = "moai-embedding-contract"
CONTRACT_VERSION = 1

Kind = Literal["query", "document"]
POOLING_MODES: tuple[str, ...] = ("lasttoken", "mean", "cls")
PADDING_SIDES: tuple[str, ...] = ("left", "right")

# The MoAI / Qwen3-Embedding retrieval instruction (queries only; documents get none).
QWEN3_QUERY_PROMPT = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: "
)


# Matryoshka: Qwen3-Embedding is trained so that the first k components (32 <= k <= 1024)
# are an embedding of their own once renormalized.
MIN_DIMENSIONS = 32


def check_dimensions(dims, contract: "EmbeddingContract") -> int:
    """A requested output width: an int from min(32, contract dims) to the contract's dims."""
    low = min(MIN_DIMENSIONS, contract.dims)
    if isinstance(dims, bool) or not isinstance(dims, int) or not low <= dims <= contract.dims:
        raise MoaiError(f"dimensions must be an integer from {low} to {contract.dims}, not {dims!r}")
    return dims


def truncate_dimensions(vectors, dims: int, normalize: bool):
    """The first `dims` components of each vector, renormalized when the contract normalizes."""
    import numpy as np

    if dims >= vectors.shape[1]:
        return vectors
    out = np.ascontiguousarray(vectors[:, :dims])
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if (norms == 0).any():
            raise MoaiError(f"a vector's first {dims} components are all zero: it has no {dims}-dim embedding")
        out = out / norms
    return out.astype(np.float32)


def check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise MoaiError(f"unknown text kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind  # type: ignore[return-value]


@dataclass(frozen=True)
class EmbeddingContract:
    """How a model turns a text of a given kind into its embedding."""

    pooling: str  # lasttoken | mean | cls
    normalize: bool  # L2-normalize the pooled vector
    dims: int  # length of the output vector
    max_tokens: int  # sequence length after truncation, end token included
    padding_side: str  # left | right (pooling is correct for both; this is what the tokenizer does)
    pad_token: str
    pad_token_id: int
    # The token the tokenizer appends to every sequence. Truncation keeps it: a text is cut to
    # max_tokens minus the added tokens, then the end token goes last. Last-token pooling reads it.
    end_token: str | None
    end_token_id: int | None
    prompts: dict[str, str] = field(default_factory=lambda: {"query": "", "document": ""})
    similarity: str = "cosine"

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise MoaiError(f"unsupported pooling {self.pooling!r}: expected one of {', '.join(POOLING_MODES)}")
        if self.padding_side not in PADDING_SIDES:
            raise MoaiError(f"unsupported padding side {self.padding_side!r}")
        if self.dims <= 0 or self.max_tokens <= 1:
            raise MoaiError(f"contract has impossible sizes: dims={self.dims}, max_tokens={self.max_tokens}")
        if self.pooling == "lasttoken" and self.end_token is None:
            raise MoaiError("last-token pooling needs an end token appended by the tokenizer; none is set")
        unknown = set(self.prompts) - set(KINDS)
        if unknown:
            raise MoaiError(f"prompts for unknown kinds {sorted(unknown)}: expected {', '.join(KINDS)}")

    def prompt_for(self, kind: str) -> str:
        return self.prompts.get(check_kind(kind), "")

    def apply_prompt(self, texts: Sequence[str], kind: str) -> list[str]:
        prompt = self.prompt_for(kind)
        return [prompt + text for text in texts]

    def with_max_tokens(self, max_tokens: int) -> "EmbeddingContract":
        return EmbeddingContract(**{**asdict(self), "max_tokens": max_tokens})

    # -- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": CONTRACT_FORMAT, "version": CONTRACT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "EmbeddingContract":
        if data.get("format") != CONTRACT_FORMAT:
            raise MoaiError(f"not an embedding contract (format={data.get('format')!r})")
        if data.get("version") != CONTRACT_VERSION:
            raise MoaiError(f"embedding contract version {data.get('version')} is not supported (want {CONTRACT_VERSION})")
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            return cls(**fields)
        except TypeError as exc:
            raise MoaiError(f"malformed embedding contract: {exc}") from None

    def save(self, directory: Path) -> Path:
        path = Path(directory) / CONTRACT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: Path) -> "EmbeddingContract":
        path = Path(directory) / CONTRACT_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MoaiError(f"{directory}: no {CONTRACT_FILE}") from None
        except json.JSONDecodeError as exc:
            raise MoaiError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data)
