"""Output shards: which shard a row belongs to, their names, their columns and their atomic writing.

A row's shard is a stable hash of its id modulo the plan's shard count, so the partition does
not depend on the order Ray reads blocks in, and a duplicated id always lands in one shard. A
shard file appears only complete (written beside its name, then renamed): a rerun after any
crash finds each shard either whole or absent, and embeds only the absent ones.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import numpy as np

SHARD_SUFFIX = ".parquet"
TEXT_HASH_BYTES = 16  # blake2b-128 of the text: what --incremental compares


def shard_of(ids) -> np.ndarray:
    """A stable 64-bit hash of each id (blake2b: the same on every machine and Python run)."""
    return np.array([int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
                     for i in ids], dtype=np.uint64)


def text_hashes(texts) -> list[bytes]:
    return [hashlib.blake2b(t.encode("utf-8"), digest_size=TEXT_HASH_BYTES).digest() for t in texts]


def shard_name(shard: int, shards: int) -> str:
    return f"part-{shard:05d}-of-{shards:05d}{SHARD_SUFFIX}"


def complete_shards(out: Path, shards: int) -> set[int]:
    return {k for k in range(shards) if (Path(out) / shard_name(k, shards)).is_file()}


def write_shard(table, path: Path) -> None:
    """Write `table` as Parquet at `path` atomically (a temporary name beside it, then rename)."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def vectors_table(ids, vectors: np.ndarray, tokens, hashes, *, float16: bool):
    """The shard's columns: `id`, `embedding` (a fixed-size list of float32, or float16), `tokens`
    and `text_hash` (of the text embedded), sorted by id so a shard's bytes do not depend on the
    order its rows were embedded in."""
    import pyarrow as pa

    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    dtype = np.float16 if float16 else np.float32
    flat = np.ascontiguousarray(np.asarray(vectors)[order], dtype=dtype)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    return pa.table({"id": pa.array(np.asarray(ids, dtype=object)[order], pa.string()), "embedding": embedding,
                     "tokens": pa.array(np.asarray(tokens, dtype=np.int64)[order], pa.int32()),
                     "text_hash": pa.array([hashes[i] for i in order], pa.binary(TEXT_HASH_BYTES))})


def embedding_matrix(table) -> np.ndarray:
    """A shard table's `embedding` column as a [rows, dims] array (its stored dtype)."""
    column = table.column("embedding").combine_chunks()
    return np.asarray(column.flatten()).reshape(table.num_rows, column.type.list_size)
