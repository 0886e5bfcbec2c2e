"""`moai-bench corpus`: embed a whole BEIR corpus in ONE call per target, the way an indexing
job does (a target that batches by itself, like the engine, gets the whole list; fixed request
sizes are the wrong model for it), then time batch-1 queries.

Per target: docs/s, real (unpadded) tokens/s, an MFU estimate (model FLOPs per token x tokens/s
over the GPU's dense bf16 peak), peak GPU memory, warm-up (compile) time, query p50/p99.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..artifacts.kinds import parse_spec
from ..core.errors import MoaiError
from ..evaluation.beir import BeirDataset
from ..gates.parity import judge_vectors
from .stats import percentile
from .targets import Target
from .workloads import length_stats

# Dense bf16 tensor-core peaks (datasheet, SXM, no sparsity). MOAI_PEAK_TFLOPS overrides.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def gpu_peak_tflops() -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from) of GPU 0, or (None, why not)."""
    if os.environ.get("MOAI_PEAK_TFLOPS"):
        return float(os.environ["MOAI_PEAK_TFLOPS"]), "MOAI_PEAK_TFLOPS"
    try:
        import torch

        if not torch.cuda.is_available():
            return None, "no GPU"
        name = torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA setup must not stop the benchmark
        return None, "no GPU"
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key in name:
            return peak, f"{name} dense bf16 datasheet peak"
    return None, f"unknown peak for {name} (set MOAI_PEAK_TFLOPS)"


def model_config_for(spec: str) -> dict | None:
    """config.json of the model a spec runs (kind:DIR?..., BASE+ADAPTER -> BASE), if local."""
    try:
        kind, location, _ = parse_spec(spec)  # the registry's parser, so both read a spec alike
    except MoaiError:
        return None
    if kind.url:
        return None
    path = Path(location.partition("+")[0]) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def flops_per_token(config: dict, mean_tokens: float) -> float | None:
    """Forward FLOPs of one token of a decoder (Qwen3/Llama shapes): 2 x the non-embedding
    weights, plus causal attention (QK^T and AV over on average half the document)."""
    try:
        hidden, layers = config["hidden_size"], config["num_hidden_layers"]
        heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
        head_dim = config.get("head_dim") or hidden // heads
        inter = config["intermediate_size"]
    except KeyError:
        return None
    per_layer = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + 3 * hidden * inter
    attention = 2 * heads * head_dim * mean_tokens  # 2 matmuls x 2 FLOPs x mean context (tokens / 2)
    return layers * (2 * per_layer + attention)


def _peak_memory_gib(reset: bool = False) -> float | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        if reset:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30
    except Exception:
        return None


def run_corpus(targets: Sequence[Target], dataset: BeirDataset, result: dict, *, batch_size: int | None = None,
               with_title: bool = False, limit: int | None = None, queries: int = 100, warmup_texts: int = 16,
               reference: Target | None = None, log: Callable[[str], None] = lambda m: None) -> None:
    """Fill `result` target by target (an interrupted run keeps the finished ones). With a
    `reference`, every target's document vectors are judged against its by the target's gate."""
    documents = dataset.documents(with_title=with_title)[:limit]
    _, query_texts, _ = dataset.evaluated_queries()
    query_texts = (query_texts * (1 + queries // max(1, len(query_texts))))[:queries]
    peak, peak_source = gpu_peak_tflops()
    result.update(dataset={"name": dataset.name, "documents": len(documents), "with_title": with_title},
                  batch_size=batch_size, queries=len(query_texts), peak_tflops=peak, peak_source=peak_source)
    rows = result.setdefault("targets", [])
    expected = None
    if reference is not None:
        log(f"reference {reference.label}: {len(documents)} documents")
        expected = reference.embedder.encode(documents, "document", batch_size=batch_size)
        result["reference"] = reference.label
    for target in targets:
        embedder = target.embedder
        tokens = target.count_tokens(documents, "document")
        mean_tokens = float(np.mean(tokens)) if tokens else 0.0
        log(f"{target.label}: warm-up")
        start = time.perf_counter()
        embedder.encode(documents[:warmup_texts], "document", batch_size=batch_size)
        embedder.encode(query_texts[:2], "query", batch_size=1)
        first_call_s = time.perf_counter() - start
        log(f"{target.label}: {len(documents)} documents in one call")
        _peak_memory_gib(reset=True)
        start = time.perf_counter()
        vectors = embedder.encode(documents, "document", batch_size=batch_size)
        seconds = time.perf_counter() - start
        peak_gib = _peak_memory_gib()
        log(f"{target.label}: {len(query_texts)} batch-1 queries")
        latencies = []
        for text in query_texts:
            t0 = time.perf_counter()
            embedder.encode([text], "query", batch_size=1)
            latencies.append(time.perf_counter() - t0)
        config = model_config_for(target.spec)
        per_token = flops_per_token(config, mean_tokens) if config else None
        tokens_per_s = sum(tokens) / seconds if seconds else None
        achieved = per_token * tokens_per_s / 1e12 if per_token and tokens_per_s else None
        rows.append({
            "target": target.label, "spec": target.spec, "precision": getattr(embedder, "precision", None),
            "batch_size": batch_size,
            "documents": len(documents), "seconds": seconds, "docs_per_s": len(documents) / seconds,
            "real_tokens": int(sum(tokens)), "real_tokens_per_s": tokens_per_s, "tokens": length_stats(tokens),
            "gflop_per_token": per_token / 1e9 if per_token else None, "achieved_tflops": achieved,
            "mfu": achieved / peak if achieved and peak else None, "peak_gpu_gib": peak_gib,
            "load_s": target.load_s, "warmup_s": getattr(embedder, "warmup_s", None), "first_calls_s": first_call_s,
            "query_p50_ms": percentile(latencies, 50) * 1e3, "query_p99_ms": percentile(latencies, 99) * 1e3,
            "dims": int(vectors.shape[1]),
        })
        if expected is not None and expected.shape == vectors.shape:
            rows[-1]["judged"] = judge_vectors(expected, vectors, target.gate(),
                                               token_lengths=tokens if any(tokens) else None)
    base = rows[0]["docs_per_s"] if rows else None
    for row in rows:
        row["docs_per_s_vs_first"] = row["docs_per_s"] / base if base else None
