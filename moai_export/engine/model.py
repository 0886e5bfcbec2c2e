"""A Qwen3 backbone run over packed documents (see packing.py), reusing the transformers
model's own modules and weights: embeddings, RMSNorms, projections, MLPs. Only the attention
differs: padding-free and per-document causal (attention.py), so no token ever computes
against padding and no document sees another."""

from __future__ import annotations

import torch

from ..core.errors import MoaiError
from .attention import ATTENTION, Packing, check_varlen_scale, document_block_mask

SUPPORTED_MODEL_TYPES = ("qwen3",)


def check_architecture(config) -> None:
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        raise MoaiError(f"the engine runs Qwen3-architecture models; this one is {config.model_type!r} "
                        "(use torch:DIR for other architectures)")
    layer_types = getattr(config, "layer_types", None) or []
    if getattr(config, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
        raise MoaiError("the engine runs full causal attention; this model uses sliding-window layers")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class PackedQwen3(torch.nn.Module):
    """(input_ids [T], positions [T], cu_seqlens, doc_ids [T]) -> last hidden states [T, hidden]."""

    def __init__(self, backbone: torch.nn.Module, attention: str, max_positions: int):
        super().__init__()
        check_architecture(backbone.config)
        self.embed_tokens = backbone.embed_tokens
        self.layers = backbone.layers
        self.norm = backbone.norm
        self.attention = attention
        first = self.layers[0].self_attn
        self.head_dim = first.head_dim
        self.scale = first.scaling
        if attention == "varlen":
            check_varlen_scale(self.scale, self.head_dim)
        # The rotary tables once, from the model's own rotary module (rope scaling included), in
        # the model's dtype as transformers computes them per call.
        weight = self.embed_tokens.weight
        positions = torch.arange(max_positions, device=weight.device)[None]
        cos, sin = backbone.rotary_emb(weight[:1], positions)
        self.register_buffer("cos", cos[0], persistent=False)
        self.register_buffer("sin", sin[0], persistent=False)

    def packing(self, cu_seqlens, doc_ids, max_len: int, lengths: list[int]) -> Packing:
        mask = document_block_mask(doc_ids) if self.attention == "flex" else None
        return Packing(cu_seqlens, doc_ids, max_len, lengths, mask)

    def forward(self, input_ids, positions, packing: Packing) -> torch.Tensor:
        total = input_ids.shape[0]
        attend = ATTENTION[self.attention]
        cos, sin = self.cos[positions][:, None, :], self.sin[positions][:, None, :]  # [T, 1, D]
        hidden = self.embed_tokens(input_ids)
        for layer in self.layers:
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_norm(attn.q_proj(x).view(total, -1, self.head_dim))
            k = attn.k_norm(attn.k_proj(x).view(total, -1, self.head_dim))
            v = attn.v_proj(x).view(total, -1, self.head_dim)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            out = attend(q, k, v, packing, self.scale)
            hidden = hidden + attn.o_proj(out.reshape(total, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.norm(hidden)


def pool_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor, num_docs: int, mode: str,
                normalize: bool) -> torch.Tensor:
    """The contract's pooling over packed rows, in float32: last token = the token before each
    document's end, cls = its first, mean = the average of its tokens."""
    starts, ends = cu_seqlens[:num_docs].long(), cu_seqlens[1:num_docs + 1].long()
    if mode == "lasttoken":
        pooled = hidden[ends - 1].float()
    elif mode == "cls":
        pooled = hidden[starts].float()
    elif mode == "mean":
        doc = torch.repeat_interleave(torch.arange(num_docs, device=hidden.device), ends - starts)
        span = hidden[: int(ends[-1])].float()
        pooled = torch.zeros(num_docs, hidden.shape[1], device=hidden.device).index_add_(0, doc, span)
        pooled = pooled / (ends - starts).clamp(min=1).unsqueeze(1).float()
    else:
        raise MoaiError(f"unknown pooling mode {mode!r}")
    return torch.nn.functional.normalize(pooled, p=2.0, dim=-1) if normalize else pooled
