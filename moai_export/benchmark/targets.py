"""Targets: `[LABEL=]SPEC` strings, each loaded through `load_embedder` (so every kind it
knows, local or remote, joins the benchmarks without code here), plus the tokenizer that
counts its real tokens."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.errors import MoaiError
from ..embedders import load_embedder
from ..embedders.base import Embedder
from ..model_files.contract_tokenizer import ContractTokenizer

_LABEL = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")


@dataclass
class Target:
    label: str
    spec: str
    embedder: Embedder
    counter: ContractTokenizer | None  # counts real tokens; None when nothing local can
    counter_source: str
    load_s: float

    @classmethod
    def loaded(cls, label: str, spec: str, embedder: Embedder, load_s: float) -> "Target":
        """An Embedder loaded from `spec`, counting tokens with its own tokenizer (see own_counter)."""
        counter, source = own_counter(embedder, spec)
        return cls(label, spec, embedder, counter, source, load_s)

    @classmethod
    def in_hand(cls, embedder: Embedder) -> "Target":
        """An Embedder already loaded (the demo's variants), labelled by its name; it counts no tokens."""
        return cls(embedder.name, "", embedder, None, "none", 0.0)

    def encode_fn(self, kind: str) -> Callable[[list[str]], np.ndarray]:
        return lambda texts: self.embedder.encode(texts, kind, batch_size=len(texts))

    def gate(self, overrides=None):
        """The gate-table cell that judges this target: its kind's family in the precision it serves,
        as `moai-export verify` would judge it (overrides replace single numbers)."""
        from ..artifacts.kinds import parse_spec
        from ..gates.table import GateOverrides

        family = parse_spec(self.spec)[0].gate_family(self.embedder)
        return (overrides or GateOverrides()).apply(family, self.embedder.precision)

    def count_tokens(self, texts: Sequence[str], kind: str, chunk: int = 256) -> list[int]:
        """Tokens each text becomes (prompt and end token included, after truncation), unpadded."""
        if self.counter is None:
            return [0] * len(texts)
        out: list[int] = []
        for start in range(0, len(texts), chunk):
            batch = self.counter.tokenize(list(texts[start:start + chunk]), kind)
            out += batch.attention_mask.sum(axis=1).astype(int).tolist()
        return out

    def describe(self) -> dict:
        c = self.embedder.contract
        return {"label": self.label, "spec": self.spec, "name": self.embedder.name,
                "class": type(self.embedder).__name__, "load_s": round(self.load_s, 2),
                "tokens_counted_with": self.counter_source,
                "contract": {"pooling": c.pooling, "dims": c.dims, "max_tokens": c.max_tokens,
                             "normalize": c.normalize, "similarity": c.similarity}}


def split_label(text: str) -> tuple[str, str]:
    """`int8=onnx:build/x` -> ("int8", "onnx:build/x"); a bare spec is its own label."""
    m = _LABEL.match(text)
    if m and ":" not in m.group(1) and "/" not in m.group(1):
        return m.group(1), m.group(2)
    return text, text


def own_counter(embedder: Embedder, spec: str) -> tuple[ContractTokenizer | None, str]:
    """The tokenizer the target itself runs, else the tokenizer.json of the directory the spec
    names (e.g. plain sentence-transformers over a model directory)."""
    tokenizer = getattr(embedder, "tokenizer", None)
    if isinstance(tokenizer, ContractTokenizer):
        return tokenizer, "own"
    location = (spec.partition(":")[2] if ":" in spec else spec).partition("?")[0]  # kind:DIR?options
    for candidate in (location, spec):
        path = Path(candidate)
        try:
            if (path / "tokenizer.json").is_file():
                return ContractTokenizer.from_dir(path, embedder.contract, repair=True), f"{path}/tokenizer.json"
        except (OSError, ValueError):  # a URL is not a path
            continue
    return None, ""


def load_targets(texts: Sequence[str], *, tokenizer_dir: Path | None = None,
                 log: Callable[[str], None] = lambda m: None) -> list[Target]:
    """Load every target in order. A target with no local tokenizer (a remote server) counts
    tokens with `tokenizer_dir`, else with the first target that has one."""
    if not texts:
        raise MoaiError("give at least one --target")
    seen: set[str] = set()
    targets: list[Target] = []
    for text in texts:
        label, spec = split_label(text)
        if label in seen:
            raise MoaiError(f"two targets are labelled {label!r}: name them LABEL=SPEC")
        seen.add(label)
        log(f"loading {label}")
        start = time.perf_counter()
        # a benchmark measures any configuration; one no gate admitted is named loudly
        embedder = load_embedder(spec, name=label, admission="warn")
        targets.append(Target.loaded(label, spec, embedder, time.perf_counter() - start))
    shared: tuple[ContractTokenizer, str] | None = None
    if tokenizer_dir is not None:
        if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
            raise MoaiError(f"--tokenizer {tokenizer_dir}: no tokenizer.json there")
    else:
        first = next((t for t in targets if t.counter is not None), None)
        shared = (first.counter, f"tokenizer of {first.label}") if first else None
    for t in targets:
        if t.counter is not None:
            continue
        if tokenizer_dir is not None:
            t.counter = ContractTokenizer.from_dir(Path(tokenizer_dir), t.embedder.contract, repair=True)
            t.counter_source = f"--tokenizer {tokenizer_dir}"
        elif shared is not None:
            t.counter, t.counter_source = shared
        else:
            t.counter_source = "none (give --tokenizer DIR to count tokens of remote targets)"
    return targets


def first_counter(targets: Sequence[Target]) -> ContractTokenizer:
    """The tokenizer generated workloads are measured with."""
    for t in targets:
        if t.counter is not None:
            return t.counter
    raise MoaiError("generated workloads need a tokenizer: give --tokenizer DIR (a local model directory)")


def close_all(targets: Sequence[Target]) -> None:
    for t in targets:
        try:
            t.embedder.close()
        except Exception:  # closing must not hide the results
            pass
