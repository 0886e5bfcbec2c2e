"""What the benchmarks feed the targets: the queries or documents of a BEIR dataset
(`evaluation.beir`) or generated texts with a stated token-length distribution.

Queries and documents stay apart everywhere: a query gets the contract's prompt, a document
does not, so mixing them would time (and score) something no deployment runs.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..core.errors import MoaiError
from ..evaluation.beir import BeirDataset
from ..evaluation.finance_triplets import TRIPLETS
from ..gates.probes import short_probes
from ..model_files.contract_tokenizer import ContractTokenizer


@dataclass
class Workload:
    name: str
    kind: str  # query | document
    texts: list[str]
    description: str
    stats: dict = field(default_factory=dict)  # token lengths, filled in per counting tokenizer

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "texts": len(self.texts), "description": self.description,
                **self.stats}


def beir_workloads(dataset: BeirDataset, kinds: Sequence[str], *, with_title: bool = False,
                   limit: int | None = None) -> list[Workload]:
    out = []
    if "query" in kinds:
        out.append(Workload(f"{dataset.name}/queries", "query", dataset.query_texts[:limit],
                            f"queries.jsonl of {dataset.path} in file order (prompted)"))
    if "document" in kinds:
        docs = dataset.documents(with_title=with_title)[:limit]
        out.append(Workload(f"{dataset.name}/documents", "document", docs,
                            f"corpus.jsonl of {dataset.path} in file order" + (" (title + text)" if with_title else "")))
    return out


@dataclass(frozen=True)
class LengthSpec:
    """Token lengths of generated texts: `N` (every text N tokens) or `A-B` (uniform integers)."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> "LengthSpec":
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
        if not m:
            raise MoaiError(f"token length {text!r}: expected N or A-B (e.g. 64 or 32-256)")
        low, high = int(m.group(1)), int(m.group(2) or m.group(1))
        if low < 2 or high < low:
            raise MoaiError(f"token length {text!r}: need 2 <= A <= B")
        return cls(low, high)

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"

    def describe(self) -> str:
        if self.low == self.high:
            return f"every text {self.low} tokens"
        return f"token lengths uniform on [{self.low}, {self.high}]"

    def sample(self, n: int, rng: random.Random) -> list[int]:
        return [rng.randint(self.low, self.high) for _ in range(n)]


def _source_text() -> str:
    """Built-in Korean finance sentences (the example's triplets and the probe documents)."""
    probes = [p.text for p in short_probes() if p.kind == "document"]
    texts = [t for triple in TRIPLETS for t in triple] + probes
    return " ".join(texts)


def generate_texts(lengths: LengthSpec, count: int, tokenizer: ContractTokenizer, *, kind: str,
                   seed: int = 0) -> tuple[list[str], list[int]]:
    """`count` texts whose model input (prompt of `kind`, text, end token) has the sampled
    token length, cut from shuffled built-in Korean finance text. Returns (texts, lengths
    measured with `tokenizer`); BPE merges at the cut can shift a text by a token or two."""
    rng = random.Random(seed)
    sentences = _source_text().split(" ")
    targets = lengths.sample(count, rng)
    need = max(targets) + 64
    ids: list[int] = []
    while len(ids) < need * 4:  # a long stream to cut windows from
        rng.shuffle(sentences)
        ids += tokenizer.tokenizer.encode(" ".join(sentences), add_special_tokens=False).ids
    texts, measured = [], []
    for target in targets:
        text, got = tokenizer.text_of_length(ids[rng.randrange(0, len(ids) - need):], target, kind)
        texts.append(text)
        measured.append(got)
    return texts, measured


def generated_workload(lengths: LengthSpec, count: int, tokenizer: ContractTokenizer, *, kind: str,
                       seed: int = 0) -> Workload:
    texts, measured = generate_texts(lengths, count, tokenizer, kind=kind, seed=seed)
    name = f"generated-{lengths}{'/queries' if kind == 'query' else ''}"
    description = (f"{count} generated Korean finance texts ({kind}), {lengths.describe()} "
                   f"(prompt and end token included), seed {seed}")
    workload = Workload(name, kind, texts, description)
    workload.stats = {"generator_tokens": length_stats(measured)}
    return workload


def length_stats(lengths: Sequence[int]) -> dict:
    arr = np.asarray(lengths, dtype=np.float64)
    if arr.size == 0:
        return {}
    return {"mean": round(float(arr.mean()), 1), "min": int(arr.min()), "p50": float(np.percentile(arr, 50)),
            "p90": float(np.percentile(arr, 90)), "max": int(arr.max()), "total": int(arr.sum())}
