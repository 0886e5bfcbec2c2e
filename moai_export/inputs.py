"""Texts -> model inputs, exactly as the contract says.

Every in-process variant (PEFT, merged torch, ONNX Runtime) and the Triton tokenizer model
use this one class, so the prompt, truncation, end token and padding cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .contract import EmbeddingContract
from .errors import MoaiError


@dataclass
class TokenizedBatch:
    input_ids: np.ndarray  # int64 [n, L]
    attention_mask: np.ndarray  # int64 [n, L]
    num_truncated: int  # texts cut to max_tokens (the end token is kept last)
    num_tokens: int  # real (unpadded) tokens in the batch


class ContractTokenizer:
    """A fast tokenizer configured from the contract: prompt per kind, truncation to
    max_tokens with the end token kept last, padding on the contract's side."""

    def __init__(self, tokenizer, contract: EmbeddingContract):
        from .tokenizer import appended_end_token, ensure_end_token

        self.contract = contract
        if contract.end_token is not None and appended_end_token(tokenizer) != contract.end_token:
            ensure_end_token(tokenizer, contract.end_token)
        if tokenizer.token_to_id(contract.pad_token) != contract.pad_token_id:
            raise MoaiError(
                f"tokenizer maps pad token {contract.pad_token!r} to {tokenizer.token_to_id(contract.pad_token)}, "
                f"the contract says {contract.pad_token_id}"
            )
        # The post-processor's added tokens count against max_length, so the end token survives truncation.
        tokenizer.enable_truncation(max_length=contract.max_tokens, strategy="longest_first", direction="right")
        tokenizer.enable_padding(
            direction=contract.padding_side, pad_id=contract.pad_token_id, pad_token=contract.pad_token
        )
        self.tokenizer = tokenizer
        self._counter = None

    @classmethod
    def from_dir(cls, directory: Path, contract: EmbeddingContract) -> "ContractTokenizer":
        import tokenizers

        path = Path(directory) / "tokenizer.json"
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise MoaiError(f"{path}: cannot load tokenizer ({exc})") from None
        return cls(tokenizer, contract)

    def tokenize(self, texts: Sequence[str], kind: str) -> TokenizedBatch:
        prompted = self.contract.apply_prompt(texts, kind)
        encodings = self.tokenizer.encode_batch(prompted, add_special_tokens=True)
        input_ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return TokenizedBatch(
            input_ids=input_ids.reshape(len(encodings), -1),
            attention_mask=attention_mask.reshape(len(encodings), -1),
            num_truncated=sum(1 for e in encodings if e.overflowing),
            num_tokens=int(attention_mask.sum()),
        )

    def count_tokens(self, text: str, kind: str) -> int:
        """Tokens of one text after the prompt and the end token, before truncation."""
        if self._counter is None:
            # A copy without truncation, so counting never races with encoding threads.
            import tokenizers

            self._counter = tokenizers.Tokenizer.from_str(self.tokenizer.to_str())
            self._counter.no_truncation()
            self._counter.no_padding()
        return len(self._counter.encode(self.contract.prompt_for(kind) + text).ids)


TOKENIZER_AUX_FILES = ("special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "vocab.txt")


def write_tokenizer_files(source: Path, contract: EmbeddingContract, out: Path, *, with_config: bool = True,
                          drop_chat_template: bool = False) -> None:
    """Write `out/tokenizer.json` from `source` with the contract's end-token post-processor
    (and no saved padding/truncation: every runtime configures those from the contract), plus
    tokenizer_config.json set to the contract's max length and padding side."""
    import json
    import shutil

    import tokenizers

    from .tokenizer import appended_end_token, ensure_end_token

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
