"""Padding-free causal attention over packed documents.

Every backend takes q [T, Hq, D], k/v [T, Hkv, D] (the documents of a batch laid end to end) and
`Packing` (where each document starts) and returns [T, Hq, D]: each token attends to the earlier
tokens of its own document only, as if the document had been run alone.

  varlen  torch.nn.attention.varlen.varlen_attn (flash attention over cu_seqlens; CUDA, bf16/fp16)
  flex    FlexAttention with a document-causal BlockMask (fast under torch.compile; any device, dtype)
  sdpa    scaled_dot_product_attention per document (any device and dtype; the CPU path)
  masked  one scaled_dot_product_attention over the whole row with a block-diagonal causal mask
          (T x T booleans: for compiled CPU runs and modest budgets, where flex does not lower)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.errors import MoaiError

BACKENDS = ("auto", "varlen", "flex", "sdpa", "masked")


@dataclass
class Packing:
    """Where the documents of a packed batch lie. `cu_seqlens` [n + 1] int32 may end with
    zero-length documents (a fixed size keeps compiled shapes stable); `doc_ids` [T] says which
    document each token belongs to (bucket padding is a document of its own, never read)."""

    cu_seqlens: torch.Tensor
    doc_ids: torch.Tensor
    max_len: int  # an upper bound on any document's length
    lengths: list[int] | None = None  # real documents' lengths, for the per-document loop
    block_mask: object = None  # flex: built once per batch, shared by every layer


def varlen_available() -> bool:
    return VARLEN_CALL is not None


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str, device: str, dtype: torch.dtype, *, compiled: bool = False) -> str:
    """The backend a name means here. `auto`: varlen on a GPU in half precision (flash
    attention), else flex when compiled on a GPU, masked when compiled on CPU (inductor's CPU
    flex template fails on these shapes in torch 2.13), else sdpa. A choice that cannot run
    here is refused."""
    if name not in BACKENDS:
        raise MoaiError(f"unknown attention {name!r}: expected one of {', '.join(BACKENDS)}")
    on_gpu = device.startswith("cuda")
    half = dtype in (torch.bfloat16, torch.float16)
    if name == "auto":
        if on_gpu and half and varlen_available():
            return "varlen"
        if compiled:
            return "flex" if on_gpu and flex_available() else "masked"
        return "sdpa"
    if name == "varlen" and not (on_gpu and half and varlen_available()):
        raise MoaiError("attention=varlen needs torch.nn.attention.varlen, a CUDA device and dtype bf16 or fp16")
    if name == "flex" and not flex_available():
        raise MoaiError("attention=flex needs torch.nn.attention.flex_attention (torch >= 2.5)")
    if name == "sdpa" and compiled:
        raise MoaiError("attention=sdpa loops over documents in Python, which torch.compile would recompile for "
                        "every batch: with compile=true use varlen, flex or masked")
    return name


def _varlen_call_kwargs(varlen_attn=None) -> tuple[dict, bool] | None:
    """How this torch's varlen_attn is asked for causal attention with our scale, worked out ONCE
    at import, outside any compiled region: torch.compile would otherwise trace the signature
    inspection inside every layer (Dynamo ignores an lru_cache wrapper and traces its body).
    Releases differ: 2.9 takes is_causal= and no scale; later ones (main since Oct 2025, 2.12, the
    local 2.13) take keyword-only scale= and window_size=(-1, 0) for causal (varlen.py computes
    `is_causal = window_size == (-1, 0)`, so it must be exactly that tuple, not a list). Returns (causal kwargs, takes scale=), or None: no usable
    varlen_attn here. (`varlen_attn`: another signature to read, for the tests.)"""
    if varlen_attn is None:
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            return None
    try:
        parameters = inspect.signature(varlen_attn).parameters
    except (TypeError, ValueError):  # no introspectable signature: assume the current one
        parameters = {"window_size": None, "scale": None}
    if "is_causal" in parameters:
        causal = {"is_causal": True}
    elif "window_size" in parameters:
        causal = {"window_size": (-1, 0)}
    else:
        return None  # neither spelling of causal: refuse rather than run bidirectional attention
    return causal, "scale" in parameters


VARLEN_CALL = _varlen_call_kwargs()  # (causal kwargs, takes scale=) of this torch's varlen_attn, or None
_VARLEN_CAUSAL, _VARLEN_TAKES_SCALE = VARLEN_CALL or ({}, False)


def varlen(q, k, v, packing: Packing, scale: float) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    if k.shape[1] != q.shape[1]:  # grouped-query attention: expand once (enable_gqa is not in every release)
        repeat = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    cu = packing.cu_seqlens
    if _VARLEN_TAKES_SCALE:
        return varlen_attn(q, k, v, cu, cu, packing.max_len, packing.max_len, scale=scale, **_VARLEN_CAUSAL)
    # torch 2.9: flash attention's own default scale, 1/sqrt(head_dim), which is Qwen3's scaling
    # (PackedQwen3 refuses varlen for a model whose scale differs: check_varlen_scale)
    return varlen_attn(q, k, v, cu, cu, packing.max_len, packing.max_len, **_VARLEN_CAUSAL)


def check_varlen_scale(scale: float, head_dim: int) -> None:
    """A varlen_attn without scale= can only run models scaled by 1/sqrt(head_dim)."""
    if VARLEN_CALL and not _VARLEN_TAKES_SCALE and abs(scale - head_dim ** -0.5) > 1e-9:
        raise MoaiError(f"this torch's varlen_attn takes no scale= and the model's attention scale is {scale}, "
                        f"not 1/sqrt({head_dim}): use attention=flex or sdpa")


def document_block_mask(doc_ids: torch.Tensor):
    """FlexAttention mask: causal within a document, nothing across documents."""
    from torch.nn.attention.flex_attention import create_block_mask

    def document_causal(b, h, q_idx, kv_idx):
        return (doc_ids[q_idx] == doc_ids[kv_idx]) & (q_idx >= kv_idx)

    total = doc_ids.shape[0]
    return create_block_mask(document_causal, None, None, total, total, device=doc_ids.device)


def flex(q, k, v, packing: Packing, scale: float) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    out = flex_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                         block_mask=packing.block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out[0].transpose(0, 1)


def sdpa(q, k, v, packing: Packing, scale: float) -> torch.Tensor:
    """One causal SDPA call per document: no token ever sees padding or another document."""
    out = torch.empty_like(q)
    gqa = k.shape[1] != q.shape[1]
    start = 0
    for length in packing.lengths:
        span = slice(start, start + length)
        # [1, H, L, D]; enable_gqa shares each key/value head with its group of query heads
        out[span] = F.scaled_dot_product_attention(
            q[span].transpose(0, 1)[None], k[span].transpose(0, 1)[None], v[span].transpose(0, 1)[None],
            is_causal=True, scale=scale, enable_gqa=gqa)[0].transpose(0, 1)
        start += length
    return out


def masked(q, k, v, packing: Packing, scale: float) -> torch.Tensor:
    """One SDPA call; the mask lets a token see the earlier tokens of its own document only."""
    doc = packing.doc_ids
    position = torch.arange(doc.shape[0], device=doc.device)
    allowed = (doc[:, None] == doc[None, :]) & (position[:, None] >= position[None, :])
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         attn_mask=allowed[None, None], scale=scale,
                                         enable_gqa=k.shape[1] != q.shape[1])
    return out[0].transpose(0, 1)


ATTENTION = {"varlen": varlen, "flex": flex, "sdpa": sdpa, "masked": masked}
