"""The Embedder interface, for the PEFT reference, the merged torch model and plain
sentence-transformers: shapes, normalization, kinds, batch invariance."""

from __future__ import annotations

import numpy as np
import pytest

from moai_export.embedders.peft_reference import PeftEmbedder
from moai_export.embedders.sentence_transformers import SentenceTransformerEmbedder
from moai_export.embedders.torch_model import TorchEmbedder
from moai_export.errors import MoaiError
from moai_export.parity import cosine_rows
from moai_export.probes import long_text

TEXTS = [
    "BC카드 연회비는 어떻게 되나요?",
    "a",
    "Credit limits are reviewed every six months, and customers may ask for more through the app.",
    "해외 결제 수수료 " * 40,
    long_text(1024),
]


@pytest.fixture(scope="module")
def merged(merged_dir):
    return TorchEmbedder.from_dir(merged_dir)


@pytest.fixture(scope="module")
def reference(example_dir):
    return PeftEmbedder.from_base_and_adapter(example_dir / "base", example_dir / "adapter")


def test_output_is_float32_normalized(merged):
    out = merged.encode(TEXTS, "document")
    assert out.dtype == np.float32 and out.shape == (len(TEXTS), 64)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_query_and_document_vectors_differ(merged):
    q = merged.encode(TEXTS[:2], "query")
    d = merged.encode(TEXTS[:2], "document")
    assert (cosine_rows(q, d) < 0.999).all()


@pytest.mark.parametrize("which", ["merged", "reference"])
def test_batch_invariance(which, request):
    """A text alone and inside a left-padded batch of mixed lengths: cos >= 0.99999 (fp32)."""
    embedder = request.getfixturevalue(which)
    for kind in ("query", "document"):
        batched = embedder.encode(TEXTS, kind, batch_size=len(TEXTS))
        alone = np.concatenate([embedder.encode([t], kind) for t in TEXTS])
        assert cosine_rows(batched, alone).min() >= 0.99999


def test_truncation_is_counted(merged):
    before = merged.num_truncated
    merged.encode([long_text(1024), "짧다"], "document")
    assert merged.num_truncated == before + 1


def test_bad_input_is_rejected(merged):
    with pytest.raises(MoaiError, match="list of texts"):
        merged.encode("just a string", "query")
    with pytest.raises(MoaiError, match="unknown text kind"):
        merged.encode(["x"], "passage")
    with pytest.raises(MoaiError, match="not str"):
        merged.encode(["x", 3], "document")
    assert merged.encode([], "query").shape == (0, 64)


def test_adapter_disabled_gives_the_base_model(reference, example_dir):
    base = TorchEmbedder.from_dir(example_dir / "base")
    with reference.adapter_disabled():
        off = reference.encode(TEXTS[:3], "query")
    on = reference.encode(TEXTS[:3], "query")
    assert cosine_rows(off, base.encode(TEXTS[:3], "query")).min() > 0.99999
    assert cosine_rows(on, off).min() < 0.999


def test_sentence_transformers_agrees_with_torch_on_real_bert(minilm):
    """Real weights, mean pooling, right padding: our pooling equals sentence-transformers'."""
    ours = TorchEmbedder.from_dir(minilm)
    theirs = SentenceTransformerEmbedder(minilm)
    texts = ["A man is eating food.", "카드 분실 신고", "", "The quick brown fox " * 100]
    for kind in ("query", "document"):
        assert cosine_rows(ours.encode(texts, kind), theirs.encode(texts, kind)).min() >= 0.99999


def test_spec_grammar_and_options(merged_dir, example_dir):
    from moai_export.embedders import load_embedder, parse_spec

    assert parse_spec(f"{example_dir / 'base'}+{example_dir / 'adapter'}")[0] == "peft"
    assert parse_spec(str(merged_dir)) == ("torch", str(merged_dir))
    assert parse_spec("triton-grpc://127.0.0.1:8001/m") == ("triton-grpc", "127.0.0.1:8001/m")
    assert parse_spec("vllm-http://127.0.0.1:8000/m?route=v1") == ("vllm-http", "127.0.0.1:8000/m?route=v1")
    import torch

    bf16 = load_embedder(f"torch:{merged_dir}?dtype=bf16&device=cpu")
    assert next(bf16.encoder.backbone.parameters()).dtype == torch.bfloat16
    with pytest.raises(MoaiError, match="option 'colour' is not known"):
        load_embedder(f"torch:{merged_dir}?colour=red")
    with pytest.raises(MoaiError, match="not a directory"):
        load_embedder("no/such/dir")
