"""`engine:DIR`: a merged Qwen3 model served at the hardware's pace.

    tokenize (producer thread) -> sort by length, cut under a token budget -> pack, no padding
    (pinned memory) -> non-blocking copy -> packed backbone (compiled, CUDA graphs for small
    batches) -> last-token pooling in float32 -> normalize -> rows written back in input order

The contract is the merged model's, unchanged: prompts, truncation keeping the end token, pooling.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.batching import TokenBudget
from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError
from ..embedders.base import TokenEmbedder, check_vectors
from ..embedders.torch_model import DTYPES, check_device, load_backbone
from ..model_files.contract_tokenizer import ContractTokenizer
from ..model_files.model_contract import read_contract
from .attention import resolve_backend
from .model import PackedQwen3, pool_packed
from .packing import PackedBatch, pack, unpad

GRAPH_MAX_TOKENS = 1024  # batches up to this many tokens replay CUDA graphs (queries, small requests)
TEXTS_PER_CHUNK = 4096  # the producer tokenizes this many texts ahead of the GPU
QUEUE_DEPTH = 4  # packed batches waiting for the GPU


@dataclass(frozen=True)
class EngineOptions:
    device: str = "cpu"
    dtype: str = "bf16"  # from_spec picks fp32 on CPU unless given (bf16 on CPU is slow and imprecise)
    max_batch_tokens: int = 16384  # real tokens per forward pass
    max_batch_size: int = 256  # documents per forward pass
    attention: str = "auto"  # auto | varlen | flex | sdpa (attention.py)
    compile: bool = False  # torch.compile with shape buckets
    cuda_graphs: bool = True  # with compile on a GPU: CUDA graphs for batches <= GRAPH_MAX_TOKENS
    compile_cache_dir: str | None = None  # inductor's cache, reused between starts
    warmup: bool = True  # compile every bucket at load (the time is reported as warmup_s)

    def check(self) -> "EngineOptions":
        if self.dtype not in DTYPES:
            raise MoaiError(f"unknown dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.max_batch_tokens < 16 or self.max_batch_size < 1:
            raise MoaiError("max_batch_tokens must be at least 16 and max_batch_size at least 1")
        check_device(self.device)
        return self


class EngineEmbedder(TokenEmbedder):
    def __init__(self, backbone: torch.nn.Module, tokenizer: ContractTokenizer, contract: EmbeddingContract,
                 options: EngineOptions, *, name: str = "engine", dims: int | None = None):
        options = options.check()
        super().__init__(contract, tokenizer, dims=dims,
                         policy=TokenBudget(options.max_batch_tokens, options.max_batch_size, packed=True))
        self.options = options
        self.device = options.device
        self.name = name
        self.precision = options.dtype
        self.on_gpu = options.device.startswith("cuda")
        torch_dtype = DTYPES[options.dtype]
        self.attention = resolve_backend(options.attention, options.device, torch_dtype, compiled=options.compile)
        with torch.inference_mode():
            self.model = PackedQwen3(backbone.to(options.device), self.attention, contract.max_tokens).eval()
        self._large = self._small = self.model
        self.compile_s = 0.0
        self.warmup_s = 0.0
        if options.compile:
            self._compile()
        if options.compile and options.warmup:
            self.warm_up()

    # -- compile and warm-up ------------------------------------------------------------------

    def _compile(self) -> None:
        """One dynamic-shape graph for large batches; on a GPU, small ones replay CUDA graphs
        (one per token bucket, recorded at the warm-up)."""
        if self.options.compile_cache_dir:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(self.options.compile_cache_dir).absolute())
        config = torch._dynamo.config  # one compiled variant per bucket: allow them all
        for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch releases
            if hasattr(config, name):
                setattr(config, name, max(getattr(config, name), 64))
        # Module floats (RMSNorm eps, the attention scale) as constants: with dynamic=True and
        # specialize_float=False (the default in recent releases; the local 2.13 too) Dynamo passes each as a 0-dim float64 CPU
        # tensor input, and a used CPU input makes inductor skip CUDA graphs ("cpu device") or
        # split them around CPU ops (graph partition). They never change, so nothing recompiles.
        if hasattr(config, "specialize_float"):
            config.specialize_float = True
        self._large = torch.compile(self.model, dynamic=True)
        if self.on_gpu and self.options.cuda_graphs:
            # dynamic too: ONE compile; CUDA graph trees then record one graph per token bucket
            # (cheap), instead of one inductor compile per bucket (tens of seconds each)
            self._small = torch.compile(self.model, dynamic=True, mode="reduce-overhead")
        else:
            self._small = self._large

    def warm_up(self) -> float:
        """Run every bucket once (twice for CUDA graphs): the compile time is paid here, not by the
        first requests. Returns (and keeps as warmup_s) the seconds it took."""
        start = time.perf_counter()
        sizes = [size for size in (16, 32, 64, 128, 256, 512, 1024) if size <= self.contract.max_tokens]
        sizes += [self.options.max_batch_tokens]
        pad = self.contract.pad_token_id
        for size in sizes:
            docs = min(self.options.max_batch_size, max(1, size // self.contract.max_tokens))
            rows = [np.full(min(size // docs, self.contract.max_tokens), pad, dtype=np.int64)] * docs
            for _ in range(3 if size <= GRAPH_MAX_TOKENS and self._small is not self._large else 1):
                self.run_rows(rows)
        self.warmup_s = time.perf_counter() - start
        return self.warmup_s

    # -- running ------------------------------------------------------------------------------

    def _pack(self, rows: Sequence[np.ndarray]) -> PackedBatch:
        compiled = self.options.compile
        return pack(rows, pad_id=self.contract.pad_token_id, bucket=compiled,
                    slots=self.options.max_batch_size + 1 if compiled else None, pin=self.on_gpu)

    @torch.inference_mode()
    def run_packed(self, batch: PackedBatch) -> np.ndarray:
        """Pooled vectors [n, dims] float32 of one packed batch, in its row order."""
        batch = batch.to(self.device)
        packing = self.model.packing(batch.cu_seqlens, batch.doc_ids, batch.max_len, batch.lengths)
        run = self._small if batch.input_ids.shape[0] <= GRAPH_MAX_TOKENS else self._large
        hidden = run(batch.input_ids, batch.positions, packing)
        pooled = pool_packed(hidden, batch.cu_seqlens, batch.num_docs, self.contract.pooling, self.contract.normalize)
        return pooled.cpu().numpy()

    def run_rows(self, rows: Sequence[np.ndarray], cap: int | None = None) -> np.ndarray:
        """Vectors of token rows (prompt and end token included), in their order: sorted and cut
        under the token budget, packed, run."""
        out = np.empty((len(rows), self.contract.dims), dtype=np.float32)
        for positions in self._policy(cap).batches([len(r) for r in rows]):
            out[positions] = self.run_packed(self._pack([rows[i] for i in positions]))
        return out

    def _policy(self, cap: int | None) -> TokenBudget:
        if cap is None:
            return self.policy
        return TokenBudget(self.options.max_batch_tokens, min(cap, self.options.max_batch_size), packed=True)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """A padded batch (the Triton tokenizer's output): unpadded, then run like any other."""
        return self.run_rows(unpad(input_ids, attention_mask))

    def _embed(self, texts: list[str], kind: str, batch_size: int | None) -> np.ndarray:
        if len(texts) <= min(TEXTS_PER_CHUNK, self.options.max_batch_size):
            tokens = self.tokenizer.encode(texts, kind)  # a request: no thread hand-off on the latency path
            self._count_truncated(tokens.num_truncated)
            return self.run_rows(tokens.ids, batch_size)
        out = np.empty((len(texts), self.contract.dims), dtype=np.float32)
        for positions, vectors in self._pipeline(texts, kind, batch_size):
            out[positions] = check_vectors(vectors, (len(positions), self.contract.dims), self.name)
        return out

    def _pipeline(self, texts: list[str], kind: str, cap: int | None):
        """(positions, vectors) per batch. A producer thread tokenizes chunk after chunk, sorts
        and packs each into pinned memory while the device runs the batches before it."""
        batches: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        stop = threading.Event()
        policy = self._policy(cap)

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for start in range(0, len(texts), TEXTS_PER_CHUNK):
                    tokens = self.tokenizer.encode(texts[start:start + TEXTS_PER_CHUNK], kind)
                    self._count_truncated(tokens.num_truncated)
                    for positions in policy.batches(tokens.lengths):
                        packed = self._pack([tokens.ids[i] for i in positions])
                        if not put((np.asarray(positions) + start, packed)):
                            return
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)
            put(None)

        producer = threading.Thread(target=produce, name="engine-tokenizer", daemon=True)
        producer.start()
        try:
            while (item := batches.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                positions, packed = item
                yield positions, self.run_packed(packed)
        finally:
            stop.set()
            producer.join()

    def close(self) -> None:
        self.model = self._large = self._small = None  # type: ignore[assignment]
        if self.on_gpu:
            torch.cuda.empty_cache()

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, directory: Path, options: EngineOptions, *, name: str | None = None,
                 dims: int | None = None, admission: str = "require") -> "EngineEmbedder":
        from ..artifacts.admission import require_admitted

        directory = Path(directory)
        options = options.check()
        config = serving_config(options)
        require_admitted(directory, config, mode=admission, spec=engine_spec(directory, options))
        contract = read_contract(directory)
        backbone = load_backbone(directory, DTYPES[options.dtype])
        embedder = cls(backbone, ContractTokenizer.from_dir(directory, contract), contract, options,
                       name=name or f"engine:{directory}", dims=dims)
        embedder.serving = config
        embedder.artifact_dir = directory
        return embedder


def engine_spec(directory: Path, options: EngineOptions) -> str:
    """The spec that loads (and `moai-export verify` admits) exactly this configuration."""
    from ..artifacts.kinds import kind_named

    compiled = {"compile": True, "cuda_graphs": options.cuda_graphs} if options.compile else {}
    return kind_named("engine").format_spec(directory, device=options.device, dtype=options.dtype,
                                            attention=options.attention, **compiled)


def serving_config(options: EngineOptions):
    """What a gate admits and a load must match: device, dtype and HOW it runs (the attention
    kernel, compiled, CUDA graphs): eager sdpa and compiled masked attention are different code,
    and a pass of one must not admit the other."""
    from ..artifacts.kinds import kind_named

    backend = resolve_backend(options.attention, options.device, DTYPES[options.dtype], compiled=options.compile)
    on_gpu = options.device.startswith("cuda")
    provider = backend + ("+compiled" if options.compile else "") + (
        "+cudagraphs" if options.compile and on_gpu and options.cuda_graphs else "")
    return kind_named("engine").serving_config(options.device, options.dtype, provider)


def from_spec(location: str, *, name: str, device: str = "cpu", dtype: str | None = None,
              max_batch_tokens: int = EngineOptions.max_batch_tokens,
              max_batch_size: int = EngineOptions.max_batch_size, attention: str = "auto", compile: bool = False,
              cuda_graphs: bool = True, compile_cache_dir: str | None = None, warmup: bool = True,
              dims: int | None = None, admission: str = "require") -> EngineEmbedder:
    """engine:DIR[?device=cuda&dtype=bf16&max_batch_tokens=16384&max_batch_size=256&attention=auto
    &compile=true&cuda_graphs=true&compile_cache_dir=PATH&warmup=true]. dtype: bf16 on a GPU,
    fp32 on CPU unless given."""
    check_device(device)
    options = EngineOptions(device=device, dtype=dtype or ("bf16" if device.startswith("cuda") else "fp32"),
                            max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size, attention=attention,
                            compile=compile, cuda_graphs=cuda_graphs, compile_cache_dir=compile_cache_dir,
                            warmup=warmup)
    return EngineEmbedder.from_dir(Path(location), options, name=name, dims=dims, admission=admission)
