"""What runs on Ray's workers: the embedding actor (one Embedder per worker, loaded once, its
admission checked where it runs) and the shard writer."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from .shards import shard_name, vectors_table, write_shard


class EmbedBatches:
    """A Ray Data actor: loads the Embedder of `spec` once (load_embedder refuses a configuration
    no gate admitted: device, dtype or provider as this worker runs it) and embeds each batch as
    documents, cut into forward passes by the Embedder's own token-budget policy."""

    def __init__(self, spec: str, dims: int | None):
        from ..artifacts.kinds import load_embedder
        from ..gates.probes import sizing_tokenizer

        self.embedder = load_embedder(spec, name=spec, admission="require", **({"dims": dims} if dims else {}))
        self.tokenizer = sizing_tokenizer(self.embedder)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, table):
        import pyarrow as pa

        texts = table.column("text").to_pylist()
        started = time.perf_counter()
        vectors = self.embedder.encode(texts, "document")
        seconds = time.perf_counter() - started
        tokens = self.tokenizer.encode(texts, "document").lengths  # as the model got them: cut to max_tokens
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        return table.drop_columns(["text"]).append_column(
            "embedding", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        ).append_column("tokens", pa.array(tokens, pa.int32())).append_column(
            "worker", pa.array([self.worker] * len(texts))
        ).append_column("seconds", pa.array([seconds / max(len(texts), 1)] * len(texts)))


def write_shard_group(table, *, out: str, shards: int, float16: bool):
    """Writes one shard's rows (a group of `shard`) atomically; returns one row of figures: rows,
    tokens, and per worker rows, tokens and embedding seconds (the report's per-worker rates)."""
    import pyarrow as pa

    shard = int(table.column("shard")[0].as_py())
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(table.num_rows, -1)
    tokens = table.column("tokens").to_numpy()
    write_shard(vectors_table(table.column("id").to_pylist(), vectors, tokens, float16=float16),
                Path(out) / shard_name(shard, shards))
    workers: dict[str, list[float]] = {}
    for worker, n, seconds in zip(table.column("worker").to_pylist(), tokens, table.column("seconds").to_pylist()):
        figures = workers.setdefault(worker, [0, 0, 0.0])
        figures[0] += 1
        figures[1] += int(n)
        figures[2] += seconds
    return pa.table({"shard": [shard], "rows": [table.num_rows], "tokens": [int(tokens.sum())],
                     "workers": [json.dumps(workers)]})
