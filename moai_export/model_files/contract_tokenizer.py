"""Texts -> model inputs, exactly as the contract says.

Every in-process variant that tokenizes here (PEFT, merged torch, ONNX Runtime, vLLM's offline
engine, the packed engine) uses this one class, so their prompt, truncation, end token and padding
cannot drift apart. The Triton tokenizer model (export/triton_backend/tokenizer_model.py) runs in
Triton's stub without this package and repeats the rules on the same tokenizer.json and contract;
sentence-transformers tokenizes by itself. The parity gates hold those two to the same vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError


@dataclass
class TokenizedBatch:
    input_ids: np.ndarray  # int64 [n, L]
    attention_mask: np.ndarray  # int64 [n, L]
    num_truncated: int  # texts cut to max_tokens (the end token is kept last)
    num_tokens: int  # real (unpadded) tokens in the batch


@dataclass
class TokenizedTexts:
    """Texts tokenized once, unpadded: any batch of them can be padded later."""

    ids: list[np.ndarray]  # int64 per text, prompt and end token included, truncated
    truncated: list[bool]
    pad_token_id: int
    padding_side: str

    @property
    def lengths(self) -> list[int]:
        return [len(row) for row in self.ids]

    @property
    def num_truncated(self) -> int:
        return sum(self.truncated)

    def padded(self, positions: Sequence[int] | None = None) -> TokenizedBatch:
        """The rows at `positions` (all by default) padded to their longest, on the contract's side."""
        rows = [self.ids[i] for i in (range(len(self.ids)) if positions is None else positions)]
        width = max((len(r) for r in rows), default=0)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for n, row in enumerate(rows):
            span = slice(width - len(row), width) if self.padding_side == "left" else slice(0, len(row))
            input_ids[n, span] = row
            attention_mask[n, span] = 1
        truncated = sum(self.truncated[i] for i in (range(len(self.ids)) if positions is None else positions))
        return TokenizedBatch(input_ids, attention_mask, truncated, int(attention_mask.sum()))


class ContractTokenizer:
    """A fast tokenizer configured from the contract: prompt per kind, truncation to
    max_tokens with the end token kept last, padding on the contract's side."""

    def __init__(self, tokenizer, contract: EmbeddingContract, *, repair: bool = False, source: str = "tokenizer"):
        """`repair`: restore a missing end-token post-processor in memory. Only for SOURCES (a
        hub snapshot saved without it): an artifact must ship a tokenizer that appends the end
        token by itself, or every consumer not using this class pools the wrong token."""
        from .qwen3_tokenizer import appended_end_token, ensure_end_token

        self.contract = contract
        if contract.end_token is not None and appended_end_token(tokenizer) != contract.end_token:
            if not repair:
                raise MoaiError(
                    f"{source} does not append {contract.end_token!r}, which the contract's last-token pooling "
                    "reads: any consumer of this file would pool the wrong token. Re-write it with moai-export "
                    "(merge / onnx / vllm / triton repair it)")
            ensure_end_token(tokenizer, contract.end_token)
        if tokenizer.token_to_id(contract.pad_token) != contract.pad_token_id:
            raise MoaiError(
                f"tokenizer maps pad token {contract.pad_token!r} to {tokenizer.token_to_id(contract.pad_token)}, "
                f"the contract says {contract.pad_token_id}"
            )
        # The post-processor's added tokens count against max_length, so the end token survives
        # truncation. No padding here: batches are padded after a batching policy chose them.
        tokenizer.enable_truncation(max_length=contract.max_tokens, strategy="longest_first", direction="right")
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self._counter = None

    @classmethod
    def from_dir(cls, directory: Path, contract: EmbeddingContract, *, repair: bool = False) -> "ContractTokenizer":
        import tokenizers

        path = Path(directory) / "tokenizer.json"
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise MoaiError(f"{path}: cannot load tokenizer ({exc})") from None
        return cls(tokenizer, contract, repair=repair, source=str(path))

    def encode(self, texts: Sequence[str], kind: str) -> TokenizedTexts:
        """Prompt, tokenize and truncate, unpadded."""
        prompted = self.contract.apply_prompt(texts, kind)
        encodings = self.tokenizer.encode_batch(prompted, add_special_tokens=True)
        return TokenizedTexts(
            ids=[np.asarray(e.ids, dtype=np.int64) for e in encodings],
            truncated=[bool(e.overflowing) for e in encodings],
            pad_token_id=self.contract.pad_token_id,
            padding_side=self.contract.padding_side,
        )

    def tokenize(self, texts: Sequence[str], kind: str) -> TokenizedBatch:
        """One padded batch of all `texts`."""
        return self.encode(texts, kind).padded()

    def count_tokens(self, text: str, kind: str) -> int:
        """Tokens of one text after the prompt and the end token, before truncation."""
        return len(self._untruncated().encode(self.contract.prompt_for(kind) + text).ids)

    def content_ids(self, text: str) -> list[int]:
        """The ids of `text` alone: no prompt, no special tokens, not truncated."""
        return self._untruncated().encode(text, add_special_tokens=False).ids

    def text_of_length(self, ids: Sequence[int], target: int, kind: str) -> tuple[str, int]:
        """(text, its length) cut from the start of the token stream `ids` so that its model input
        (prompt of `kind`, text, end token; truncated as the model gets it) is `target` tokens long. BPE merges at the cut can
        shift the count: the cut is re-made until it lands, up to four times, so a text may be a
        token or two off."""
        overhead = self.encode([""], kind).lengths[0]  # prompt + special tokens
        content = max(target - overhead, 1)
        for _ in range(4):  # re-cut until the count lands (decode/encode is not an exact inverse)
            text = self.tokenizer.decode(list(ids[:content])).replace("\ufffd", "").strip() or "카드"
            got = self.encode([text], kind).lengths[0]
            if got == target or content <= 1:
                break
            content = max(content + target - got, 1)
        return text, got

    def _untruncated(self):
        if self._counter is None:
            # A copy without truncation, so counting never races with encoding threads.
            import tokenizers

            self._counter = tokenizers.Tokenizer.from_str(self.tokenizer.to_str())
            self._counter.no_truncation()
            self._counter.no_padding()
        return self._counter


TOKENIZER_AUX_FILES = ("special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "vocab.txt")


def write_tokenizer_files(source: Path, contract: EmbeddingContract, out: Path, *, with_config: bool = True,
                          drop_chat_template: bool = False) -> None:
    """Write `out/tokenizer.json` from `source` with the contract's end-token post-processor
    (and no saved padding/truncation: every runtime configures those from the contract), plus
    tokenizer_config.json set to the contract's max length and padding side."""
    import json
    import shutil

    import tokenizers

    from .qwen3_tokenizer import appended_end_token, ensure_end_token

    source, out = Path(source), Path(out)
    tokenizer = tokenizers.Tokenizer.from_file(str(source / "tokenizer.json"))
    if contract.end_token is not None and appended_end_token(tokenizer) != contract.end_token:
        ensure_end_token(tokenizer, contract.end_token)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.save(str(out / "tokenizer.json"))
    if not with_config:
        return
    for name in TOKENIZER_AUX_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    config_path = source / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if drop_chat_template:
        config.pop("chat_template", None)
    config.update(model_max_length=contract.max_tokens, padding_side=contract.padding_side,
                  pad_token=contract.pad_token)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")


def shipped_tokenizer_failures(directory: Path, contract: EmbeddingContract, texts: Sequence[tuple[str, str]]) -> list[str]:
    """Read `directory/tokenizer.json` as any consumer would (plain `tokenizers`, no help from
    this toolkit) and check it against the contract on (kind, text) pairs: the end token last,
    and the same ids as the contract tokenizer for texts under max tokens."""
    import tokenizers

    path = Path(directory) / "tokenizer.json"
    try:
        plain = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception
        return [f"{path.name}: cannot be loaded ({exc})"]
    plain.no_truncation()
    plain.no_padding()
    reference = ContractTokenizer(tokenizers.Tokenizer.from_file(str(path)), contract, repair=True)
    failures = []
    for kind, text in texts:
        ids = plain.encode(contract.prompt_for(kind) + text).ids
        if len(ids) > contract.max_tokens:
            continue
        if contract.end_token_id is not None and (not ids or ids[-1] != contract.end_token_id):
            failures.append(f"shipped {path.name} does not end {kind} {text[:30]!r} with {contract.end_token!r} "
                            f"(last id {ids[-1] if ids else None}, expected {contract.end_token_id})")
            break
        expected = reference.encode([text], kind).ids[0].tolist()
        if ids != expected:
            failures.append(f"shipped {path.name} tokenizes {kind} {text[:30]!r} differently from the contract")
            break
    return failures
