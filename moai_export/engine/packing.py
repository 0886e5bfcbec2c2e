"""Documents laid end to end in one token row, no padding between them.

A batch of n documents becomes input_ids [T], positions [T] (restarting at 0 for every document,
so rotary embeddings see each one as if it ran alone) and cu_seqlens [n + 1]. For torch.compile
the total is rounded up to a bucket (the rest is a filler document, never read) so the number of
compiled shapes stays bounded, and cu_seqlens can be held to a fixed number of slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

SMALL_BUCKETS_UP_TO = 1024  # powers of two up to here (queries, small batches: CUDA graphs)
LARGE_BUCKET_STEP = 1024  # then multiples of this (corpus batches near the token budget)
MIN_BUCKET = 16


def token_bucket(total: int) -> int:
    """The compiled size a batch of `total` real tokens runs at."""
    if total <= SMALL_BUCKETS_UP_TO:
        return max(MIN_BUCKET, 1 << max(0, total - 1).bit_length())
    return -(-total // LARGE_BUCKET_STEP) * LARGE_BUCKET_STEP


def length_bucket(longest: int) -> int:
    """An upper bound on a document's length for the varlen kernels (bounded recompiles)."""
    return max(MIN_BUCKET, 1 << max(0, longest - 1).bit_length())


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    cu_seqlens: torch.Tensor  # int32 [slots + 1]
    doc_ids: torch.Tensor  # int32 [T]; the filler is document n
    lengths: list[int]  # the real documents' lengths
    max_len: int  # bound on any document's (and the filler's) length

    @property
    def num_docs(self) -> int:
        return len(self.lengths)

    def to(self, device: str) -> "PackedBatch":
        """Copies to `device`; non-blocking from pinned memory, so the copy overlaps GPU work."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PackedBatch(move(self.input_ids), move(self.positions), move(self.cu_seqlens), move(self.doc_ids),
                           self.lengths, self.max_len)


def pack(rows: Sequence[np.ndarray], *, pad_id: int, bucket: bool = False, slots: int | None = None,
         pin: bool = False) -> PackedBatch:
    """Pack token rows. `bucket`: round the total up to token_bucket() with a filler document;
    `slots`: a cu_seqlens of fixed length slots + 1 (zero-length documents at the end)."""
    lengths = [len(row) for row in rows]
    total = sum(lengths)
    size = token_bucket(total) if bucket else total
    filler = size - total
    ids = np.full(size, pad_id, dtype=np.int64)
    positions = np.zeros(size, dtype=np.int64)
    doc_ids = np.full(size, len(rows), dtype=np.int32)
    bounds = np.zeros(len(rows) + 1 + (1 if filler else 0), dtype=np.int32)
    start = 0
    for n, row in enumerate(rows):
        ids[start:start + len(row)] = row
        positions[start:start + len(row)] = np.arange(len(row))
        doc_ids[start:start + len(row)] = n
        start += len(row)
        bounds[n + 1] = start
    if filler:
        bounds[-1] = size
    if slots is not None:
        bounds = np.concatenate([bounds, np.full(max(0, slots + 1 - len(bounds)), size, dtype=np.int32)])
    longest = max(lengths + [filler])
    max_len = longest
    if bucket:
        # Small buckets replay CUDA graphs, one per shape: their bound is the bucket itself, so a
        # batch's shape is its token bucket alone (an overestimate only launches idle blocks).
        max_len = size if size <= SMALL_BUCKETS_UP_TO else length_bucket(longest)

    def tensor(array):
        t = torch.from_numpy(array)
        return t.pin_memory() if pin else t

    return PackedBatch(tensor(ids), tensor(positions), tensor(bounds), tensor(doc_ids), lengths, max_len)


def unpad(input_ids: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
    """Padded rows (either side) -> each row's real tokens, in order."""
    return [ids[mask.astype(bool)] for ids, mask in zip(input_ids, attention_mask)]
