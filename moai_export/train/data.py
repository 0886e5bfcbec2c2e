"""Training pairs (JSON lines or parquet: query, positive, optional negative) and the validation
set (a BEIR directory, or a held-out share of the training queries).

Bad rows stop the run with file and line. Empty texts and duplicate rows are counted and
reported: rows with an empty text are dropped (they teach nothing), duplicates are kept
(the no-duplicates batch sampler keeps them out of one another's batch)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..core.errors import MoaiError
from ..core.text_files import utf8_lines
from ..evaluation.beir import load_beir

COLUMNS = ("query", "positive", "negative")


@dataclass
class TrainingPairs:
    path: Path
    rows: list[tuple[str, ...]]  # (query, positive) or (query, positive, negative), all of one width
    counts: dict = field(default_factory=dict)

    @property
    def has_negative(self) -> bool:
        return bool(self.rows) and len(self.rows[0]) == 3

    def columns(self) -> dict[str, list[str]]:
        names = COLUMNS[: len(self.rows[0])]
        return {name: [row[i] for row in self.rows] for i, name in enumerate(names)}


@dataclass
class Validation:
    """What sentence-transformers' InformationRetrievalEvaluator takes."""

    source: str
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]

    def describe(self) -> dict:
        return {"source": self.source, "queries": len(self.queries), "documents": len(self.corpus),
                "qrels": sum(len(v) for v in self.relevant.values())}


def _records(path: Path) -> Iterator[tuple[str, object]]:
    """(where, row) for every row of a JSON lines or parquet file; `where` is file:line."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not parquet
            raise MoaiError(f"{path}: not a readable parquet file ({exc})") from None
        for number, row in enumerate(table.to_pylist(), 1):
            yield f"{path}:row {number}", row
        return
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise MoaiError(f"{path}:{number}: not valid JSON ({exc.msg})") from None


def read_pairs(path: Path) -> TrainingPairs:
    path = Path(path)
    if not path.is_file():
        raise MoaiError(f"{path}: no such training file (JSON lines or .parquet with query, positive[, negative])")
    rows: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = set()
    counts = {"rows": 0, "used": 0, "duplicates": 0, "empty_dropped": 0, "first_empty": None,
              "first_duplicate": None}
    width = None
    for where, record in _records(path):
        counts["rows"] += 1
        if not isinstance(record, dict):
            raise MoaiError(f"{where}: expected an object with query, positive[, negative]")
        negative = record.get("negative")
        values = [record.get("query"), record.get("positive")] + ([negative] if negative is not None else [])
        for name, value in zip(COLUMNS, values):
            if not isinstance(value, str):
                raise MoaiError(f"{where}: {name!r} must be a string, not {type(value).__name__}"
                                if value is not None else f"{where}: no {name!r}")
        if width is None:
            width = len(values)
        elif len(values) != width:
            raise MoaiError(f"{where}: {'has' if len(values) == 3 else 'lacks'} a 'negative' unlike the rows "
                            "before it (every row has one, or none)")
        row = tuple(values)
        if any(not text.strip() for text in row):
            counts["empty_dropped"] += 1
            counts["first_empty"] = counts["first_empty"] or where
            continue
        if row in seen:
            counts["duplicates"] += 1
            counts["first_duplicate"] = counts["first_duplicate"] or where
        seen.add(row)
        rows.append(row)
    counts["used"] = len(rows)
    counts["with_negative"] = bool(width == 3)
    counts["distinct_queries"] = len({row[0] for row in rows})
    if len(rows) < 2:
        raise MoaiError(f"{path}: need at least 2 usable rows (in-batch negatives), found {len(rows)}")
    return TrainingPairs(path, rows, counts)


def beir_validation(directory: Path) -> Validation:
    """The BEIR directory's queries that have a relevant document IN ITS CORPUS: a qrel naming an
    absent document can never be retrieved, and a validation made only of those scores 0 at every
    step (the best checkpoint would be chosen on nothing)."""
    dataset = load_beir(directory)
    ids, texts, _ = dataset.evaluated_queries()
    named, in_corpus = dataset.relevant(), set(dataset.corpus_ids)
    relevant = {q: named[q] & in_corpus for q in ids}
    kept = [(q, text) for q, text in zip(ids, texts) if relevant[q]]
    if not kept:
        absent = sorted(set().union(*(named[q] for q in ids)))
        raise MoaiError(f"{dataset.path}: no relevant document of the qrels is in corpus.jsonl (e.g. "
                        f"{', '.join(absent[:3])}): the validation could measure nothing")
    return Validation(str(dataset.path), dict(kept), dict(zip(dataset.corpus_ids, dataset.documents())),
                      {q: relevant[q] for q, _ in kept})


def split_validation(pairs: TrainingPairs, fraction: float, seed: int) -> tuple[TrainingPairs, Validation]:
    """Hold out `fraction` of the distinct queries: their rows leave training, and they are
    scored against every positive and negative text of the file."""
    if not 0 < fraction < 1:
        raise MoaiError(f"--eval-split must be between 0 and 1, not {fraction}")
    queries = sorted({row[0] for row in pairs.rows})
    held = set(random.Random(seed).sample(queries, max(1, round(len(queries) * fraction))))
    if len(held) >= len(queries) - 1:
        raise MoaiError(f"--eval-split {fraction} leaves fewer than 2 training queries of {len(queries)}")
    documents = sorted({text for row in pairs.rows for text in row[1:]})
    doc_id = {text: f"d{i}" for i, text in enumerate(documents)}
    query_id = {text: f"q{i}" for i, text in enumerate(sorted(held))}
    relevant: dict[str, set[str]] = {}
    for row in pairs.rows:
        if row[0] in held:
            relevant.setdefault(query_id[row[0]], set()).add(doc_id[row[1]])
    kept = [row for row in pairs.rows if row[0] not in held]
    counts = {**pairs.counts, "used": len(kept), "held_out_rows": len(pairs.rows) - len(kept),
              "distinct_queries": len(queries) - len(held)}
    validation = Validation(f"{pairs.path} (held-out {fraction:g} of the queries, seed {seed})",
                            {q: text for text, q in query_id.items()},
                            {d: text for text, d in doc_id.items()}, relevant)
    return TrainingPairs(pairs.path, kept, counts), validation
