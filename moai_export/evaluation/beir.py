"""BEIR-format retrieval datasets: a directory with corpus.jsonl, queries.jsonl and qrels.tsv
(here or under beir/), read into one BeirDataset, and written back (tests build their own)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.errors import MoaiError
from ..core.text_files import utf8_lines

BEIR_FILES = ("corpus.jsonl", "queries.jsonl")
QRELS_CANDIDATES = ("qrels.tsv", "qrels/test.tsv")


@dataclass
class BeirDataset:
    path: Path
    corpus_ids: list[str]
    corpus_texts: list[str]
    corpus_titles: list[str]
    corpus_domains: list[str | None]
    query_ids: list[str]
    query_texts: list[str]
    query_domains: list[str | None]
    qrels: dict[str, dict[str, int]]  # query id -> corpus id -> graded score (as in the file)

    @property
    def name(self) -> str:
        # autorag-ko/beir -> autorag-ko: the folder people name the dataset by
        return self.path.parent.name if self.path.name == "beir" else self.path.name

    def documents(self, *, with_title: bool = False) -> list[str]:
        if not with_title:
            return list(self.corpus_texts)
        return [f"{title}\n{text}" if title else text for title, text in zip(self.corpus_titles, self.corpus_texts)]

    def relevant(self) -> dict[str, set[str]]:
        """Binary relevance: every qrel with a score > 0."""
        out: dict[str, set[str]] = {}
        for qid, docs in self.qrels.items():
            rel = {cid for cid, score in docs.items() if score > 0}
            if rel:
                out[qid] = rel
        return out

    def evaluated_queries(self, limit: int | None = None) -> tuple[list[str], list[str], list[str | None]]:
        """(ids, texts, domains) of the queries that have at least one relevant document, in
        file order (what sentence-transformers' InformationRetrievalEvaluator scores)."""
        relevant = self.relevant()
        rows = [(q, t, d) for q, t, d in zip(self.query_ids, self.query_texts, self.query_domains) if q in relevant]
        rows = rows[:limit] if limit else rows
        if not rows:
            raise MoaiError(f"{self.path}: no query has a relevant document in the qrels")
        ids, texts, domains = (list(c) for c in zip(*rows))
        if not any(domains):  # fall back on the corpus' domain of the first relevant document
            domain_of = dict(zip(self.corpus_ids, self.corpus_domains))
            domains = [domain_of.get(sorted(relevant[q])[0]) for q in ids]
        return ids, texts, domains

    def describe(self) -> dict:
        return {"path": str(self.path), "documents": len(self.corpus_ids), "queries": len(self.query_ids),
                "queries_with_qrels": len(self.relevant()),
                "qrels": sum(len(v) for v in self.qrels.values()),
                "unknown_corpus_ids_in_qrels": len({c for v in self.qrels.values() for c in v} - set(self.corpus_ids))}


def find_beir_dir(path: Path) -> Path:
    """DIR itself or DIR/beir (as in ../shared/data/datasets/autorag-ko)."""
    path = Path(path)
    for candidate in (path, path / "beir"):
        if all((candidate / f).is_file() for f in BEIR_FILES):
            return candidate
    if not path.exists():
        raise MoaiError(f"{path}: no such dataset directory")
    missing = [f for f in BEIR_FILES if not (path / f).is_file()]
    raise MoaiError(f"{path}: not a BEIR directory (missing {', '.join(missing)}; expected corpus.jsonl, "
                    "queries.jsonl and qrels.tsv here or under beir/)")


def read_rows(path: Path) -> list[dict]:
    """The rows of a corpus.jsonl or queries.jsonl, each with \"_id\" and a string \"text\"."""
    rows = []
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MoaiError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "_id" not in row or not isinstance(row.get("text"), str):
            raise MoaiError(f"{path}:{number}: a row needs \"_id\" and a string \"text\"")
        rows.append(row)
    if not rows:
        raise MoaiError(f"{path}: empty")
    return rows


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for number, line in utf8_lines(path):
        parts = line.split("\t")
        if not line.strip() or (number == 1 and parts[0] in ("query-id", "query_id", "qid")):
            continue
        if len(parts) == 4:  # TREC style: qid, iteration, docid, score
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise MoaiError(f"{path}:{number}: expected query-id<TAB>corpus-id<TAB>score")
        try:
            score = int(float(parts[2]))
        except ValueError:
            raise MoaiError(f"{path}:{number}: score {parts[2]!r} is not a number") from None
        qrels.setdefault(parts[0], {})[parts[1]] = score
    return qrels


def load_beir(path: Path) -> BeirDataset:
    root = find_beir_dir(path)
    qrels_path = next((root / q for q in QRELS_CANDIDATES if (root / q).is_file()), None)
    if qrels_path is None:
        raise MoaiError(f"{root}: no qrels.tsv (or qrels/test.tsv)")
    corpus = read_rows(root / "corpus.jsonl")
    queries = read_rows(root / "queries.jsonl")
    ids = [str(r["_id"]) for r in corpus]
    if len(set(ids)) != len(ids):
        raise MoaiError(f"{root / 'corpus.jsonl'}: duplicate _id values")
    return BeirDataset(
        path=root,
        corpus_ids=ids,
        corpus_texts=[r["text"] for r in corpus],
        corpus_titles=[str(r.get("title") or "") for r in corpus],
        corpus_domains=[r.get("domain") for r in corpus],
        query_ids=[str(r["_id"]) for r in queries],
        query_texts=[r["text"] for r in queries],
        query_domains=[r.get("domain") for r in queries],
        qrels=_read_qrels(qrels_path),
    )


def write_beir(directory: Path, corpus: Sequence[dict], queries: Sequence[dict],
               qrels: Sequence[tuple[str, str, int]]) -> Path:
    """Write a BEIR directory (rows as in the files: {"_id", "text", ...}); the inverse of load_beir."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        (directory / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                      encoding="utf-8")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{c}\t{s}" for q, c, s in qrels]
    (directory / "qrels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory
