"""What runs on Ray's workers: the embedding actor. It loads the Embedder once, checks it where it
runs (its admission, then the probe set against the expected vectors), and turns staged shards
into written shards, one whole shard per call."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np

from ..artifacts.directories import write_json
from ..core.errors import VerificationFailed
from .shards import embedding_matrix, shard_name, vectors_table, write_shard
from .staging import read_staged

WORKERS_DIR = ".workers"  # one record per actor start: a restarted worker shows as one more


class EmbedShards:
    """A Ray Data actor. load_embedder refuses a configuration no gate admitted (device, dtype or
    provider as this worker runs it); the probe gate then catches what admission cannot (a
    worker whose files or libraries differ from the machine that admitted them). Each call gets
    shard numbers, embeds their staged texts as documents (cut into forward passes by the
    Embedder's own token budget), reuses the vectors of unchanged texts from `previous` (an
    earlier output of the same artifact: --incremental), and writes each shard atomically."""

    def __init__(self, spec: str, dims: int | None, expected, overrides, out: str, shards: int, float16: bool,
                 previous: str | None, cpus: float):
        from ..artifacts.kinds import load_embedder, parse_spec

        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.out, self.shards, self.float16 = Path(out), shards, float16
        self._record_start({})  # first: an actor killed while loading counts as started
        self.previous = Path(previous) if previous else None
        kind, _, spec_options = parse_spec(spec)
        options = {**({"dims": dims} if dims else {}), **_threads_for(kind.name, spec_options, cpus)}
        self.embedder = load_embedder(spec, name=spec, admission="require", **options)
        gate = overrides.apply(kind.gate_family(self.embedder), self.embedder.precision)
        report = expected.gate(self.embedder, gate)
        if not report.passed:
            raise VerificationFailed(f"{self.worker}: {spec} fails its probe gate here against {expected.reference}: "
                                     + "; ".join(report.reasons()[:3]))
        from ..gates.probes import sizing_tokenizer

        self.tokenizer = sizing_tokenizer(self.embedder)
        serving = getattr(self.embedder, "serving", None)
        self._record_start({"config": serving.describe() if serving else None,
                            "min_cosine": report.parity.min_cosine})

    def _record_start(self, figures: dict) -> None:
        (self.out / WORKERS_DIR).mkdir(parents=True, exist_ok=True)
        write_json(self.out / WORKERS_DIR / f"{self.worker.replace(':', '-')}.json",
                   {"worker": self.worker, "started": time.time(), **figures})

    def __call__(self, batch: dict) -> dict:
        figures: dict[str, list] = {"shard": [], "rows": [], "embedded": [], "reused": [], "tokens": [],
                                    "seconds": [], "worker": []}
        for shard in (int(k) for k in batch["shard"]):
            started = time.perf_counter()
            rows, reused, tokens = self._shard(shard)
            for key, value in (("shard", shard), ("rows", rows), ("embedded", rows - reused), ("reused", reused),
                               ("tokens", tokens), ("seconds", time.perf_counter() - started),
                               ("worker", self.worker)):
                figures[key].append(value)
        return {key: np.asarray(values) for key, values in figures.items()}

    def _shard(self, shard: int) -> tuple[int, int, int]:
        """(rows, rows reused from the previous output, tokens embedded now) of one written shard."""
        staged = read_staged(self.out, shard, self.shards)
        ids, texts = staged.column("id").to_pylist(), staged.column("text").to_pylist()
        hashes = staged.column("text_hash").to_pylist()
        vectors = np.zeros((len(ids), self.embedder.dims), dtype=np.float32)
        tokens = np.zeros(len(ids), dtype=np.int64)
        todo = self._reuse(shard, ids, hashes, vectors, tokens)
        if todo:
            chosen = [texts[i] for i in todo]
            vectors[todo] = self.embedder.encode(chosen, "document")
            tokens[todo] = self.tokenizer.encode(chosen, "document").lengths  # as the model got them
        write_shard(vectors_table(ids, vectors, tokens, hashes, float16=self.float16),
                    self.out / shard_name(shard, self.shards))
        return len(ids), len(ids) - len(todo), int(tokens[todo].sum()) if todo else 0

    def _reuse(self, shard: int, ids: list, hashes: list, vectors: np.ndarray, tokens: np.ndarray) -> list[int]:
        """Copy the previous output's vectors of rows whose id and text are unchanged (the same
        shard count, so a row's previous shard is this one); returns the rows left to embed."""
        if self.previous is None:
            return list(range(len(ids)))
        import pyarrow.parquet as pq

        before = pq.read_table(self.previous / shard_name(shard, self.shards))
        known = {(i, h): row for row, (i, h) in enumerate(zip(before.column("id").to_pylist(),
                                                              before.column("text_hash").to_pylist()))}
        matches = [(row, known.get((i, h))) for row, (i, h) in enumerate(zip(ids, hashes))]
        hits = [(row, old) for row, old in matches if old is not None]
        if hits:
            rows, old = map(list, zip(*hits))
            vectors[rows] = embedding_matrix(before)[old].astype(np.float32)
            tokens[rows] = before.column("tokens").to_numpy()[old]
        return [row for row, old in matches if old is None]


def _threads_for(kind: str, spec_options: dict, cpus: float) -> dict:
    """Keep a worker on the CPUs Ray gave it: onnxruntime sizes its thread pool (spinning threads)
    by the machine's cores, so two workers on one machine would each take every core; torch reads
    its own count. The spec's own ?intra_op_threads wins."""
    threads = max(1, int(cpus))
    if kind == "onnx":
        return {} if spec_options.get("intra_op_threads") else {"intra_op_threads": threads}
    if kind in ("torch", "engine", "st"):
        import torch

        torch.set_num_threads(threads)
    return {}
