"""Pooling as plain tensor ops, written so the same code exports to ONNX.

Every mode is correct for left AND right padding: positions come from the attention mask,
never from "the last column" or "the first column".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    # Highest position that holds a real token. (arange * mask).amax avoids ArgMax, whose
    # tie-breaking differs between runtimes.
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions.unsqueeze(0) * attention_mask).amax(dim=1)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    # Number of leading pad positions: 0 for right padding, the pad count for left padding.
    return (attention_mask.cumsum(dim=1) == 0).sum(dim=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[batch, seq, dim] hidden states -> [batch, dim] according to `mode`."""
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "lasttoken":
        return hidden[batch, last_token_index(attention_mask)]
    if mode == "cls":
        return hidden[batch, first_token_index(attention_mask)]
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(torch.bool)
        # where(), not multiply: a pad row may hold NaN (fully masked attention) and NaN * 0 = NaN.
        summed = torch.where(mask, hidden, torch.zeros_like(hidden)).sum(dim=1)
        counts = attention_mask.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)
        return summed / counts
    raise ValueError(f"unknown pooling mode {mode!r}")


class ContractPooler(torch.nn.Module):
    """Pooling method + optional L2 normalization, computed in float32 whatever the model dtype."""

    def __init__(self, mode: str, normalize: bool):
        super().__init__()
        self.mode = mode
        self.normalize = normalize

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = pool(hidden.float(), attention_mask, self.mode)
        return F.normalize(pooled, p=2.0, dim=-1) if self.normalize else pooled
