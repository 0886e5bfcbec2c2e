"""How an Embedder cuts tokenized texts into forward passes.

A policy sees only the token count of each text (after prompt, truncation and end token) and
returns batches as lists of input positions; the Embedder runs each batch and writes its rows
back at those positions, so the caller always gets vectors in input order.

  FixedCount(n)                       input order, n texts a batch (the classic behaviour)
  TokenBudget(max_batch_tokens, cap)  longest first, each batch's padded size
                                      (rows x longest row) under the budget: padding is
                                      minimal and the memory a batch needs is bounded;
                                      packed=True counts real tokens (sequences laid end to
                                      end without padding, the engine's packing)

The in-process variants (onnx, torch) batch by `serving_budget(device)` unless told otherwise:
on documents as long as real ones, fixed-count batches pad every batch to its longest text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from .errors import MoaiError


class BatchPolicy(Protocol):
    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Input positions of each batch; every position exactly once."""


@dataclass(frozen=True)
class FixedCount:
    size: int = 16

    def __post_init__(self) -> None:
        if self.size < 1:
            raise MoaiError(f"batch size must be at least 1, not {self.size}")

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        n = len(lengths)
        return [list(range(start, min(start + self.size, n))) for start in range(0, n, self.size)]


@dataclass(frozen=True)
class TokenBudget:
    """Sort by length (longest first, so the first batch shows the peak memory at once), then
    fill each batch while rows x longest row stays within `max_batch_tokens` and the row count
    within `max_batch_size`. A single text longer than the budget gets a batch of its own.
    `packed`: the batch costs the sum of its rows (no padding), not rows x longest row."""

    max_batch_tokens: int = 16384
    max_batch_size: int = 128
    packed: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 1 or self.max_batch_size < 1:
            raise MoaiError("max_batch_tokens and max_batch_size must be at least 1")

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
        out: list[list[int]] = []
        current: list[int] = []
        longest = total = 0
        for position in order.tolist():
            length = int(lengths[position])
            # sorted longest first: the batch's longest row is its first one
            rows_after = len(current) + 1
            cost = total + length if self.packed else rows_after * max(longest, length)
            if current and (cost > self.max_batch_tokens or rows_after > self.max_batch_size):
                out.append(current)
                current, longest, total = [], 0, 0
            current.append(position)
            longest = max(longest, length)
            total += length
        if current:
            out.append(current)
        return out


# CPU: measured by bench/token_budget.py (onnx and torch fp32, the small example, 240 autorag-ko
# passages of mean 531 tokens): 4,096 was best or within 3% of best for both, ~2x the old fixed
# batches of 16 (bench/results/2026-12-07-amd-epyc-2cpu/token-budget/). CUDA: the engine's order
# of magnitude (larger passes keep the device busy), not yet measured for onnx/torch on a GPU.
SERVING_BUDGETS = {"cpu": TokenBudget(max_batch_tokens=4096, max_batch_size=64),
                   "cuda": TokenBudget(max_batch_tokens=32768, max_batch_size=256)}


def serving_budget(device: str, max_batch_tokens: int | None = None, max_batch_size: int | None = None) -> TokenBudget:
    """The batching an in-process variant serves with on `device` (cpu, cuda[:N]); either limit
    may be set by the caller (a spec's ?max_batch_tokens= / ?max_batch_size=)."""
    default = SERVING_BUDGETS["cuda" if device.startswith("cuda") else "cpu"]
    return TokenBudget(max_batch_tokens or default.max_batch_tokens, max_batch_size or default.max_batch_size)


def describe_policy(policy: BatchPolicy) -> dict:
    """What a gate records about the batching it embedded with."""
    if isinstance(policy, TokenBudget):
        return {"policy": "token-budget", "max_batch_tokens": policy.max_batch_tokens,
                "max_batch_size": policy.max_batch_size, "packed": policy.packed}
    if isinstance(policy, FixedCount):
        return {"policy": "fixed-count", "batch_size": policy.size}
    return {"policy": type(policy).__name__}


def padded_tokens(batches: list[list[int]], lengths: Sequence[int]) -> int:
    """Token slots the batches occupy once each is padded to its longest row."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
