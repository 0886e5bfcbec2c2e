"""The GPU engine: a merged Qwen3 model run length-sorted, padding-free, compiled, in bf16.

    attention.py  padding-free per-document causal attention (varlen flash, FlexAttention, SDPA)
    packing.py    documents laid end to end, shape buckets for torch.compile
    model.py      the transformers Qwen3 modules run over packed tokens; pooling over packed rows
    embedder.py   EngineEmbedder (kind `engine:DIR`): scheduling, producer thread, compile, warm-up
"""

from .embedder import EngineEmbedder, EngineOptions, from_spec

__all__ = ["EngineEmbedder", "EngineOptions", "from_spec"]
