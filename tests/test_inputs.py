"""Texts -> input ids: prompt per kind, truncation keeping the end token, left padding."""

from __future__ import annotations

import numpy as np
import pytest

from moai_export.core.errors import MoaiError
from moai_export.model_files.contract_tokenizer import ContractTokenizer
from moai_export.model_files.model_contract import read_contract

EOT = 151643
KOREAN_IDS = [4897, 129616, 29346, 77353, 61741, 70582, 16560, 130108, 97143, 60315, 35711, 30]


@pytest.fixture(scope="module")
def tokenizer(example_dir):
    base = example_dir / "base"
    return ContractTokenizer.from_dir(base, read_contract(base))


def test_document_ids_end_with_end_token(tokenizer):
    batch = tokenizer.tokenize(["BC카드 연회비는 어떻게 되나요?"], "document")
    assert batch.input_ids[0].tolist() == KOREAN_IDS + [EOT]
    assert batch.num_truncated == 0 and batch.num_tokens == 13


def test_query_gets_prompt_document_does_not(tokenizer):
    text = "BC카드 연회비는 어떻게 되나요?"
    query = tokenizer.tokenize([text], "query").input_ids[0].tolist()
    prompt = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: "
    assert query == tokenizer.tokenizer.encode(prompt + text, add_special_tokens=False).ids + [EOT]
    assert query[-12:] == KOREAN_IDS[1:] + [EOT]  # "Query: BC" merges the space into " BC"
    assert len(query) > 13


def test_left_padding_and_every_row_ends_with_end_token(tokenizer):
    batch = tokenizer.tokenize(["짧다", "BC카드 연회비는 어떻게 되나요?"], "document")
    assert batch.input_ids.dtype == np.int64 and batch.attention_mask.dtype == np.int64
    assert (batch.input_ids[:, -1] == EOT).all()
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[0, -1] == 1
    assert batch.input_ids[0, 0] == EOT  # pad token is <|endoftext|>


def test_truncation_keeps_end_token_last(tokenizer):
    long_text = "카드 " * 3000
    batch = tokenizer.tokenize([long_text, "짧다"], "query")
    assert batch.input_ids.shape == (2, 1024)
    assert batch.input_ids[0, -1] == EOT and batch.attention_mask[0].sum() == 1024
    assert batch.num_truncated == 1
    assert tokenizer.count_tokens(long_text, "query") > 1024


def test_pad_token_mismatch_is_rejected(example_dir):
    import tokenizers

    base = example_dir / "base"
    contract = read_contract(base)
    wrong = type(contract)(**{**contract.__dict__, "pad_token_id": 5})
    with pytest.raises(MoaiError, match="pad token"):
        ContractTokenizer(tokenizers.Tokenizer.from_file(str(base / "tokenizer.json")), wrong)
