"""The user's own probe texts (`--probes PATH`): a sample of their corpus that every parity gate
embeds in addition to the built-in probe set, so an artifact is admitted on texts like the ones it
will serve, as long as them.

PATH is a BEIR directory (corpus.jsonl read as documents, queries.jsonl as queries; no qrels
needed) or a JSON-lines file of {"text": ..., "kind": "query" | "document"} (optional "id").
The sample is drawn with a fixed seed, stratified by kind and length bucket: the strata take
turns, each drawing from its own seeded shuffle, so the few long documents of a corpus of
mostly short ones are drawn rather than lost to proportional sampling.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Sequence

from ..artifacts.admission import sha256_file
from ..core.errors import MoaiError
from ..core.input_rules import KINDS, InvalidInput, check_texts
from ..core.text_files import utf8_lines
from ..evaluation.beir import find_beir_dir, read_rows
from ..model_files.contract_tokenizer import ContractTokenizer
from .length_buckets import bucket_order, length_bucket
from .probes import Probe

# 64 texts: several per stratum (two kinds, up to six length buckets), and few enough that a gate
# on the full-size model embeds them with the reference and the candidate in about a minute on CPU.
DEFAULT_SAMPLE = 64
# A fixed seed: the same file gives the same sample, so a record can be re-run (`moai-export verify`).
DEFAULT_SEED = 0


@dataclass(frozen=True)
class ProbeOptions:
    """Which texts the gates embed besides the built-in probe set (`--probes`, `--probe-sample`,
    `--probe-seed`); no path: the built-in set alone."""

    path: Path | None = None
    sample: int = DEFAULT_SAMPLE
    seed: int = DEFAULT_SEED


@dataclass
class ProbeFile:
    path: Path
    format: str  # beir | jsonl
    files: dict[str, str]  # sha256 of each file read, by name
    probes: list[Probe]


def read_probe_file(path: Path) -> ProbeFile:
    """The texts of a BEIR directory or a JSON-lines file of {"text", "kind"}."""
    path = Path(path)
    if path.is_dir():
        root = find_beir_dir(path)
        documents, queries = read_rows(root / "corpus.jsonl"), read_rows(root / "queries.jsonl")
        # an empty text has no embedding (the input rules refuse it): a corpus may hold some
        probes = [Probe(f"queries.jsonl:{row['_id']}", "query", row["text"]) for row in queries if row["text"]]
        probes += [Probe(f"corpus.jsonl:{row['_id']}", "document", row["text"]) for row in documents if row["text"]]
        files = {name: sha256_file(root / name) for name in ("corpus.jsonl", "queries.jsonl")}
        return ProbeFile(root, "beir", files, probes)
    if not path.is_file():
        raise MoaiError(f"--probes {path}: no such file or directory")
    return ProbeFile(path, "jsonl", {path.name: sha256_file(path)}, _read_jsonl(path))


def _read_jsonl(path: Path) -> list[Probe]:
    probes = []
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MoaiError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise MoaiError(f'{where}: expected an object {{"text": ..., "kind": "query" | "document"}}')
        if row.get("kind") not in KINDS:
            raise MoaiError(f'{where}: "kind" must be one of {", ".join(KINDS)}, not {row.get("kind")!r}')
        if "text" not in row:
            raise MoaiError(f'{where}: no "text"')
        try:
            check_texts([row["text"]])
        except InvalidInput as exc:
            raise MoaiError(f'{where}: "text" {exc.problem}') from None
        probes.append(Probe(f"{path.name}:{row.get('id', number)}", row["kind"], row["text"]))
    if not probes:
        raise MoaiError(f"{path}: no probe texts (expected JSON lines of {{\"text\", \"kind\"}})")
    return probes


def stratified_sample(keys: Sequence[Hashable], size: int, seed: int) -> list[int]:
    """Indices of `size` items (every item when there are fewer), in their given order. Items with
    equal keys form a stratum; the strata take turns, each drawing from its own shuffle by `seed`,
    so a small stratum is drawn whole before the large ones fill the rest."""
    rng = random.Random(seed)
    strata: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        strata.setdefault(key, []).append(index)
    queues = []
    for key in sorted(strata):
        queue = strata[key]
        rng.shuffle(queue)
        queues.append(queue)
    chosen: list[int] = []
    while len(chosen) < size and any(queues):
        for queue in queues:
            if queue and len(chosen) < size:
                chosen.append(queue.pop())
    return sorted(chosen)


@dataclass
class ProbeSample:
    """The texts drawn from a probe file, and what identifies them."""

    file: ProbeFile
    options: ProbeOptions
    probes: list[Probe]

    def describe(self) -> dict:
        def per_kind(probes):
            return {kind: sum(p.kind == kind for p in probes) for kind in KINDS}

        return {"path": str(self.file.path.resolve()), "format": self.file.format, "files": self.file.files,
                "available": per_kind(self.file.probes), "sample": self.options.sample, "seed": self.options.seed,
                "drawn": per_kind(self.probes)}


def draw_sample(options: ProbeOptions, tokenizer: ContractTokenizer) -> ProbeSample:
    """`options.sample` texts of `options.path`, stratified by kind and length bucket (lengths in
    the contract tokenizer's tokens)."""
    if options.sample < 1:
        raise MoaiError(f"--probe-sample must be at least 1, not {options.sample}")
    file = read_probe_file(options.path)
    max_tokens = tokenizer.contract.max_tokens
    keys = [(p.kind, bucket_order(length_bucket(tokenizer.count_tokens(p.text, p.kind), max_tokens)))
            for p in file.probes]
    chosen = stratified_sample(keys, options.sample, options.seed)
    return ProbeSample(file, options, [file.probes[i] for i in chosen])
