"""The packed engine (`engine:DIR`) on CPU in float32: scheduling, padding-free attention,
batch independence, the compiled CPU path, the parity gate and its errors. The GPU paths (varlen
flash attention, compiled on CUDA, CUDA graphs, bf16) are measured by bench/gpu_engine.py on a GPU
machine."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from moai_export.commands.export_cli import main
from moai_export.core.batching import TokenBudget
from moai_export.core.errors import MoaiError
from moai_export.embedders import load_embedder
from moai_export.engine.attention import resolve_backend
from moai_export.engine.packing import pack, token_bucket, unpad
from moai_export.gates.probes import long_text

# Mixed lengths: one-word queries next to texts cut at max tokens.
TEXTS = ["짧은 질문", "BC카드 연회비는 어떻게 되나요? " * 8, long_text(1024), "a", "retrieval " * 50,
         "모아이 임베딩 " * 3, "last one"]


@pytest.fixture(scope="module")
def engine(merged_dir):
    with load_embedder(f"engine:{merged_dir}", admission="skip") as embedder:
        yield embedder


@pytest.fixture(scope="module")
def padded(merged_dir):
    with load_embedder(f"torch:{merged_dir}") as embedder:
        yield embedder


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("kind", ["query", "document"])
def test_packed_equals_padded_in_fp32(engine, padded, kind):
    assert engine.precision == "fp32" and engine.attention == "sdpa"  # fp32 on CPU unless asked
    assert cosines(engine.encode(TEXTS, kind), padded.encode(TEXTS, kind)).min() >= 0.99999


def test_order_restored_and_batch_independent(engine):
    """Sorting by length and packing must be invisible: each row is its own text's vector,
    whatever shares its batch and wherever it stood."""
    together = engine.encode(TEXTS, "document")
    reversed_order = engine.encode(TEXTS[::-1], "document")[::-1]
    alone = np.concatenate([engine.encode([text], "document") for text in TEXTS])
    assert cosines(together, alone).min() >= 0.99999
    assert cosines(together, reversed_order).min() >= 0.99999
    # rows differ from each other: a shuffled result would not pass the checks above by chance
    assert cosines(together, np.roll(together, 1, axis=0)).max() < 0.999


def test_bucketed_packing_matches_exact_packing(engine):
    """Compiled runs pad the packed row to a bucket with a filler document and a fixed
    cu_seqlens: the filler must not change any document's vector."""
    rows = engine.tokenizer.encode(TEXTS, "document").ids
    exact = engine.run_packed(pack(rows, pad_id=engine.contract.pad_token_id))
    bucketed = pack(rows, pad_id=engine.contract.pad_token_id, bucket=True, slots=32)
    assert bucketed.input_ids.shape[0] == token_bucket(sum(len(r) for r in rows)) > sum(len(r) for r in rows)
    assert cosines(exact, engine.run_packed(bucketed)).min() >= 0.99999


def test_token_budget_respected(merged_dir, monkeypatch):
    budget, cap = 300, 3
    seen = []
    with load_embedder(f"engine:{merged_dir}?max_batch_tokens={budget}&max_batch_size={cap}",
                       admission="skip") as small:
        original = small.run_packed
        monkeypatch.setattr(small, "run_packed", lambda batch: seen.append(batch.lengths) or original(batch))
        texts = TEXTS * 3
        small.encode(texts, "document")
    lengths = sorted(len(r) for r in small.tokenizer.encode(texts, "document").ids)
    assert sorted(n for batch in seen for n in batch) == lengths  # every text exactly once
    assert all(len(batch) <= cap for batch in seen)
    assert all(sum(batch) <= budget or len(batch) == 1 for batch in seen)
    assert len(seen) > len(texts) / cap  # the budget, not only the cap, cut batches


def test_token_budget_policy_packed_counts_real_tokens():
    lengths = [100, 10, 90, 20, 80]
    padded = TokenBudget(200, 10).batches(lengths)
    packed = TokenBudget(200, 10, packed=True).batches(lengths)
    assert packed == [[0, 2], [4, 3, 1]]  # 190, 110 real tokens
    assert padded == [[0, 2], [4, 3], [1]]  # rows x longest: 3 x 80 > 200
    assert sorted(i for b in packed for i in b) == list(range(5))


def test_long_input_stream_uses_the_producer_thread(engine, padded, monkeypatch):
    """More texts than one request: tokenized chunk by chunk on the producer thread."""
    import moai_export.engine.embedder as module

    monkeypatch.setattr(module, "TEXTS_PER_CHUNK", 4)
    texts = [f"문서 {i} " * (1 + i % 9) for i in range(40)]
    assert cosines(engine.encode(texts, "document"), padded.encode(texts, "document")).min() >= 0.99999


def test_triton_style_padded_input(engine, padded):
    """forward() takes a padded batch (what the Triton tokenizer model sends) and unpads it."""
    batch = engine.tokenizer.tokenize(TEXTS, "query")
    assert [len(r) for r in unpad(batch.input_ids, batch.attention_mask)] == batch.attention_mask.sum(1).tolist()
    assert cosines(engine.forward(batch.input_ids, batch.attention_mask),
                   padded.forward(batch.input_ids, batch.attention_mask)).min() >= 0.99999


@pytest.mark.slow
def test_compiled_path_equals_padded_and_is_batch_independent(merged_dir, padded):
    """compile=true as it serves on CPU (inductor, the masked attention, shape buckets with
    zero-length slot documents): the same vectors as the padded model, alone or packed."""
    with load_embedder(f"engine:{merged_dir}?compile=true&max_batch_tokens=2048", admission="skip") as compiled:
        assert compiled.attention == "masked" and compiled.warmup_s > 0
        together = compiled.encode(TEXTS, "query")
        alone = np.concatenate([compiled.encode([text], "query") for text in TEXTS])
    reference = padded.encode(TEXTS, "query")
    assert cosines(together, reference).min() >= 0.99999
    assert cosines(alone, reference).min() >= 0.99999


def test_bf16_batch_independence(merged_dir):
    with load_embedder(f"engine:{merged_dir}?dtype=bf16", admission="skip") as bf16:
        together = bf16.encode(TEXTS, "document")
        alone = np.concatenate([bf16.encode([text], "document") for text in TEXTS])
    assert cosines(together, alone).min() >= 0.9999


def test_verify_admits_the_engine_and_fails_a_wrong_reference(example_dir, merged_dir, tmp_path):
    artifact = tmp_path / "merged"
    shutil.copytree(merged_dir, artifact)
    reference = f"{example_dir / 'base'}+{example_dir / 'adapter'}"
    json_path = tmp_path / "verify.json"
    result = CliRunner().invoke(main, ["verify", f"engine:{artifact}", "--reference", reference,
                                       "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(json_path.read_text())["results"][0]
    assert report["kind"] == "engine" and report["precision"] == "fp32" and report["admitted"]
    assert report["thresholds"]["min_cosine"] == 0.99999  # the engine family's fp32 gate
    # now admitted: it loads without --allow-unverified
    load_embedder(f"engine:{artifact}").close()
    # ... as it was verified only: compiled, it runs other code (masked attention), not admitted
    with pytest.raises(MoaiError, match=r"not verified for engine on cpu in fp32, masked\+compiled.*"
                                        r"verify 'engine:.*compile=true"):
        load_embedder(f"engine:{artifact}?compile=true")
    # the gate can fail: the same engine against the plain base model (no adapter)
    result = CliRunner().invoke(main, ["verify", f"engine:{artifact}", "--reference", f"torch:{example_dir / 'base'}",
                                       "--no-admit", "--json", str(json_path)])
    assert result.exit_code == 3 and "FAIL" in result.output


def test_unverified_configuration_is_refused(merged_dir):
    with pytest.raises(MoaiError, match="not verified for engine on cpu in fp32"):
        load_embedder(f"engine:{merged_dir}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_absent_is_a_clear_error(example_dir, merged_dir, tmp_path):
    with pytest.raises(MoaiError, match="torch sees no CUDA GPU"):
        load_embedder(f"engine:{merged_dir}?device=cuda", admission="skip")
    result = CliRunner().invoke(main, ["verify", f"engine:{merged_dir}?device=cuda", "--reference",
                                       f"{example_dir / 'base'}+{example_dir / 'adapter'}",
                                       "--json", str(tmp_path / "v.json")])
    assert result.exit_code != 0 and "no CUDA GPU" in result.output and "Traceback" not in result.output


def test_attention_choices_are_checked():
    assert resolve_backend("auto", "cpu", torch.float32) == "sdpa"
    with pytest.raises(MoaiError, match="varlen needs"):
        resolve_backend("varlen", "cpu", torch.float32)
    with pytest.raises(MoaiError, match="with compile=true use varlen, flex or masked"):
        resolve_backend("sdpa", "cpu", torch.float32, compiled=True)
    with pytest.raises(MoaiError, match="unknown attention"):
        resolve_backend("paged", "cpu", torch.float32)


def test_varlen_call_follows_the_installed_signature():
    """varlen_attn changed its signature across torch releases; the engine reads it once, at
    import (never inside a compiled region), and asks for causal attention the way it is spelled."""
    from moai_export.engine.attention import _varlen_call_kwargs

    def torch_2_9(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None): ...

    def torch_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                   window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None): ...

    def unknown(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k): ...

    assert _varlen_call_kwargs(torch_2_9) == ({"is_causal": True}, False)
    # a tuple, exactly: varlen.py tests `window_size == (-1, 0)`
    assert _varlen_call_kwargs(torch_2_12) == ({"window_size": (-1, 0)}, True)
    assert _varlen_call_kwargs(unknown) is None  # never silently bidirectional


def test_unknown_option_and_architecture(merged_dir, minilm):
    with pytest.raises(MoaiError, match="option 'batch' is not known for engine"):
        load_embedder(f"engine:{merged_dir}?batch=3")
    with pytest.raises(MoaiError, match="Qwen3-architecture"):
        load_embedder(f"engine:{minilm}", admission="skip")


def test_shape_buckets_are_few_and_cover_every_size():
    """What bounds torch.compile's recompiles: every total maps to a bucket at least as large,
    and 1..32768 tokens need a few dozen shapes, not thousands."""
    buckets = {total: token_bucket(total) for total in range(1, 32769)}
    assert all(bucket >= total for total, bucket in buckets.items())
    assert len(set(buckets.values())) <= 40
    small = pack([np.arange(5), np.arange(9)], pad_id=0, bucket=True, slots=4)
    assert small.max_len == small.input_ids.shape[0] == 16  # small batches: one shape per bucket (CUDA graphs)
    assert small.cu_seqlens.tolist() == [0, 5, 14, 16, 16]  # filler document, then zero-length slots
