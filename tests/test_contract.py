"""The contract read from sentence-transformers directories, and written beside artifacts."""

from __future__ import annotations

import json
import shutil

import pytest

from moai_export.core.contract import QWEN3_QUERY_PROMPT, EmbeddingContract
from moai_export.core.errors import MoaiError
from moai_export.model_files.model_contract import read_contract
from moai_export.model_files.sentence_transformers_format import derive_contract


def test_example_base_contract_is_moai(example_dir):
    c = derive_contract(example_dir / "base")
    assert c.pooling == "lasttoken" and c.normalize
    assert c.max_tokens == 1024 and c.dims == 64
    assert c.padding_side == "left"
    assert (c.end_token, c.end_token_id) == ("<|endoftext|>", 151643)
    assert (c.pad_token, c.pad_token_id) == ("<|endoftext|>", 151643)
    assert c.prompts == {"query": QWEN3_QUERY_PROMPT, "document": ""}
    assert QWEN3_QUERY_PROMPT.endswith("\nQuery: ")


def test_minilm_contract_is_mean_pooling(minilm):
    c = derive_contract(minilm)
    assert (c.pooling, c.normalize, c.dims, c.max_tokens) == ("mean", True, 384, 256)
    assert c.padding_side == "right"
    assert c.end_token == "[SEP]" and c.pad_token == "[PAD]" and c.pad_token_id == 0
    assert c.prompts == {"query": "", "document": ""}


def test_round_trip_and_artifact_file_wins(example_dir, tmp_path):
    c = derive_contract(example_dir / "base")
    shutil.copytree(example_dir / "base", tmp_path / "m")
    changed = c.with_max_tokens(77)
    changed.save(tmp_path / "m")
    assert read_contract(tmp_path / "m") == changed
    assert EmbeddingContract.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_sentence_transformers_v6_pooling_config(example_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(example_dir / "base", model)
    (model / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": 64, "pooling_mode": "lasttoken", "include_prompt": True})
    )
    assert derive_contract(model).pooling == "lasttoken"


def test_lost_end_token_post_processor_is_restored(example_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(example_dir / "base", model)
    data = json.loads((model / "tokenizer.json").read_text())
    data["post_processor"] = None
    (model / "tokenizer.json").write_text(json.dumps(data))
    assert derive_contract(model).end_token == "<|endoftext|>"


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda m: (m / "modules.json").unlink(), "no modules.json"),
        (lambda m: (m / "modules.json").write_text("{not json"), "not valid JSON"),
        (lambda m: (m / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 64, "pooling_mode_max_tokens": True})), "not supported"),
        (lambda m: (m / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 32, "pooling_mode_lasttoken": True})), "hidden size"),
        (lambda m: (m / "tokenizer.json").unlink(), "no tokenizer.json"),
    ],
)
def test_bad_model_dirs_are_clear_errors(example_dir, tmp_path, breakage, message):
    model = tmp_path / "m"
    shutil.copytree(example_dir / "base", model)
    breakage(model)
    with pytest.raises(MoaiError, match=message):
        derive_contract(model)


def test_contract_rejects_unknown_values():
    with pytest.raises(MoaiError, match="pooling"):
        EmbeddingContract(pooling="max", normalize=True, dims=4, max_tokens=8, padding_side="left",
                          pad_token="p", pad_token_id=0, end_token="e", end_token_id=1)
    with pytest.raises(MoaiError, match="end token"):
        EmbeddingContract(pooling="lasttoken", normalize=True, dims=4, max_tokens=8, padding_side="left",
                          pad_token="p", pad_token_id=0, end_token=None, end_token_id=None)
