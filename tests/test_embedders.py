"""The Embedder interface, for the PEFT reference, the merged torch model and plain
sentence-transformers: shapes, normalization, kinds, batch invariance."""

from __future__ import annotations

import numpy as np
import pytest

from moai_export.core.errors import MoaiError
from moai_export.embedders.peft_reference import PeftEmbedder
from moai_export.embedders.sentence_transformers import SentenceTransformerEmbedder
from moai_export.embedders.torch_model import TorchEmbedder
from moai_export.gates.parity import cosine_rows
from moai_export.gates.probes import long_text

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
    with pytest.raises(MoaiError, match="unknown text kind 'passage': expected one of query, document"):
        merged.encode(["x"], "passage")
    with pytest.raises(MoaiError, match="expected one of query, document"):
        merged.encode(["x"], None)
    with pytest.raises(TypeError, match="kind"):  # no default kind: a query embedded as a document is silently wrong
        merged.encode(["x"])
    with pytest.raises(MoaiError, match="not str"):
        merged.encode(["x", 3], "document")
    assert merged.encode([], "query").shape == (0, 64)


def test_empty_text_is_an_error_named_by_position(merged, reference):
    """One policy for every variant: "" has no embedding (the servers answer 400 the same way)."""
    for embedder in (merged, reference):
        with pytest.raises(MoaiError, match="text 1 is empty"):
            embedder.encode(["fine", "", "also fine"], "document")
    assert merged.encode([" "], "document").shape == (1, 64)  # whitespace is text


def test_a_zero_vector_is_an_error_not_a_result(merged):
    """A vector of norm 0 ranks silently wrong: every variant refuses to return one."""
    from moai_export.embedders.base import TokenEmbedder

    class Zeros(TokenEmbedder):
        def forward(self, input_ids, attention_mask):
            out = merged.forward(input_ids, attention_mask)
            out[-1] = 0.0
            return out

    zeros = Zeros(merged.contract, merged.tokenizer)
    with pytest.raises(MoaiError, match="text 1 embedded to a zero vector"):
        zeros.encode(["a", "b"], "document", batch_size=2)


def test_matryoshka_dims_are_the_renormalized_prefix(merged_dir, merged):
    from moai_export.embedders import load_embedder

    full = merged.encode(TEXTS[:3], "query")
    with load_embedder(f"torch:{merged_dir}?dims=32") as small:
        cut = small.encode(TEXTS[:3], "query")
    assert cut.shape == (3, 32)
    assert np.allclose(cut, full[:, :32] / np.linalg.norm(full[:, :32], axis=1, keepdims=True), atol=1e-6)
    for bad in (0, 16, 65):
        with pytest.raises(MoaiError, match="dimensions must be an integer from 32 to 64"):
            load_embedder(f"torch:{merged_dir}?dims={bad}")


def test_token_budget_policy_restores_order_and_matches_fixed_batches(merged):
    """Length-sorted batches under a token budget: the same vectors, in input order."""
    from moai_export.core.batching import FixedCount, TokenBudget, padded_tokens

    texts = [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(11)]
    fixed = merged.encode(texts, "document", batch_size=4)
    lengths = merged.tokenizer.encode(texts, "document").lengths
    budget = TokenBudget(max_batch_tokens=2048, max_batch_size=4)
    batches = budget.batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))
    assert all(len(b) * max(lengths[i] for i in b) <= 2048 or len(b) == 1 for b in batches)
    assert padded_tokens(batches, lengths) <= padded_tokens(FixedCount(4).batches(lengths), lengths)
    serving, merged.policy = merged.policy, budget
    try:
        sorted_run = merged.encode(texts, "document")
    finally:
        merged.policy = serving
    assert cosine_rows(sorted_run, fixed).min() >= 0.99999


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_serving_budget_mixes_lengths_without_changing_vectors(kind, merged_dir, onnx_fp32_dir):
    """The batching the in-process variants serve (and are gated) with: length-sorted under a
    token budget. Every forward pass stays within the budget, the vectors come back in input
    order, and a batch mixing a near-max text with short ones gives each text's vector alone
    within the fp32 gate (cosine >= 0.99999, max abs <= 1e-4): wrong padding or order fails."""
    from moai_export.artifacts.kinds import load_embedder

    directory = merged_dir if kind == "torch" else onnx_fp32_dir
    embedder = load_embedder(f"{kind}:{directory}?max_batch_tokens=2048&max_batch_size=8")
    assert embedder.batching == {"policy": "token-budget", "max_batch_tokens": 2048, "max_batch_size": 8,
                                 "packed": False}
    texts = ["카드", long_text(1024)[:5000], "해외 결제 수수료 안내", "a", long_text(1024)[:2500],
             "Credit limits are reviewed every six months."]
    lengths = embedder.tokenizer.encode(texts, "document").lengths
    assert max(lengths) >= 900 and min(lengths) <= 4
    shapes = []
    forward = embedder.forward
    embedder.forward = lambda ids, mask: shapes.append(ids.shape) or forward(ids, mask)
    try:
        together = embedder.encode(texts, "document")
    finally:
        del embedder.forward
    assert all(rows * width <= 2048 or rows == 1 for rows, width in shapes)
    assert any(rows > 1 and width >= 900 for rows, width in shapes), shapes  # a long and a short text shared a pass
    alone = np.concatenate([embedder.encode([text], "document") for text in texts])
    assert cosine_rows(together, alone).min() >= 0.99999
    assert np.abs(together - alone).max() <= 1e-4


def test_default_batching_follows_the_device(merged):
    from moai_export.core.batching import SERVING_BUDGETS, serving_budget

    assert merged.policy == SERVING_BUDGETS["cpu"]
    assert serving_budget("cuda:1") == SERVING_BUDGETS["cuda"]
    assert serving_budget("cpu", max_batch_size=3).max_batch_size == 3


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
    texts = ["A man is eating food.", "카드 분실 신고", ".", "The quick brown fox " * 100]
    for kind in ("query", "document"):
        assert cosine_rows(ours.encode(texts, kind), theirs.encode(texts, kind)).min() >= 0.99999


def test_spec_grammar_and_options(merged_dir, example_dir):
    from moai_export.embedders import load_embedder, parse_spec

    def kind_of(spec):
        kind, location, options = parse_spec(spec)
        return kind.name, location, options

    assert kind_of(f"{example_dir / 'base'}+{example_dir / 'adapter'}")[0] == "peft"
    assert kind_of(str(merged_dir)) == ("torch", str(merged_dir), {})
    assert kind_of("triton-grpc://127.0.0.1:8001/m") == ("triton-grpc", "127.0.0.1:8001/m", {})
    assert kind_of("vllm-http://127.0.0.1:8000/m?route=v1") == ("vllm-http", "127.0.0.1:8000/m", {"route": "v1"})
    assert kind_of(f"onnx:{merged_dir}?intra_op_threads=2&allow_unverified=true")[2] == {
        "intra_op_threads": 2, "allow_unverified": True}
    import torch

    # the merged directory was admitted for fp32 on CPU only: bf16 is refused, or loaded loudly
    with pytest.raises(MoaiError, match="not verified for torch on cpu in bf16"):
        load_embedder(f"torch:{merged_dir}?dtype=bf16&device=cpu")
    bf16 = load_embedder(f"torch:{merged_dir}?dtype=bf16&device=cpu&allow_unverified=true")
    assert next(bf16.encoder.backbone.parameters()).dtype == torch.bfloat16
    with pytest.raises(MoaiError, match="torch sees no CUDA GPU"):
        load_embedder(f"torch:{merged_dir}?device=cuda&allow_unverified=true")
    with pytest.raises(MoaiError, match="option 'colour' is not known"):
        load_embedder(f"torch:{merged_dir}?colour=red")
    with pytest.raises(MoaiError, match="not a directory"):
        load_embedder("no/such/dir")
