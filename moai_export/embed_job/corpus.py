"""The corpus a job embeds: which files (local paths or globs, sorted so every run sees the same
list), in which format, under which id and text columns, read as a Ray Data dataset."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import MoaiError

FORMATS = ("auto", "jsonl", "parquet")


@dataclass(frozen=True)
class CorpusOptions:
    id_column: str = "_id"  # BEIR's corpus.jsonl names its ids `_id`
    text_column: str = "text"
    format: str = "auto"  # auto: by file suffix (.parquet, else JSON lines)


def is_uri(path: str) -> bool:
    return "://" in path


def input_files(paths: list[str]) -> list[str]:
    """Every file `paths` names (a file, a BEIR directory's corpus.jsonl, here or under beir/, else
    a directory's *.jsonl/*.parquet, a glob; local, or a URI pyarrow reads: s3://, gs://, file://), sorted and without repeats: the
    order the job's plan is made in."""
    found: set[str] = set()
    for path in paths:
        matches = _remote_matches(path) if is_uri(path) else _local_matches(path)
        if not matches:
            raise MoaiError(f"{path}: no corpus file (expected a BEIR directory, .jsonl or .parquet files, or a glob)")
        found.update(matches)
    return sorted(found)


def _local_matches(path: str) -> list[str]:
    if Path(path).is_dir():
        directory = Path(path)
        beir = [p for p in (directory / "corpus.jsonl", directory / "beir" / "corpus.jsonl") if p.is_file()]
        matches = beir[:1] or sorted([*directory.glob("*.jsonl"), *directory.glob("*.parquet")])
    else:
        matches = [Path(p) for p in glob.glob(path)] or ([Path(path)] if Path(path).is_file() else [])
    return [str(p.resolve()) for p in matches]


def _remote_matches(uri: str) -> list[str]:
    """The same rules through pyarrow's filesystem of the URI's scheme (a glob in the last part)."""
    import fnmatch

    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        return [uri]
    directory, pattern = (path, None) if info.type == fs.FileType.Directory else path.rsplit("/", 1)
    try:
        entries = filesystem.get_file_info(fs.FileSelector(directory))
    except (FileNotFoundError, OSError):
        return []
    names = {e.path.rsplit("/", 1)[-1]: e.path for e in entries if e.type == fs.FileType.File}
    if pattern is None and "corpus.jsonl" not in names:
        beir = filesystem.get_file_info(f"{directory.rstrip('/')}/beir/corpus.jsonl")
        if beir.type == fs.FileType.File:
            return [f"{scheme}://{beir.path}"]
    if pattern is None:
        chosen = ["corpus.jsonl"] if "corpus.jsonl" in names else [n for n in names if n.endswith((".jsonl", ".parquet"))]
    else:
        chosen = fnmatch.filter(names, pattern)
    return [f"{scheme}://{names[n]}" for n in sorted(chosen)]


def format_of(files: list[str], options: CorpusOptions) -> str:
    if options.format != "auto":
        return options.format
    kinds = {"parquet" if f.endswith(".parquet") else "jsonl" for f in files}
    if len(kinds) > 1:
        raise MoaiError("the corpus mixes Parquet and JSON lines files; embed them in separate jobs")
    return kinds.pop()


def fingerprint(files: list[str]) -> list[dict]:
    """What a rerun must find unchanged for its complete shards to stay valid."""
    from pyarrow import fs

    found = []
    for f in files:
        filesystem, path = fs.FileSystem.from_uri(f) if is_uri(f) else (fs.LocalFileSystem(), f)
        info = filesystem.get_file_info(path)
        found.append({"path": f, "bytes": info.size, "mtime_ns": info.mtime_ns})
    return found


def read_corpus(files: list[str], options: CorpusOptions):
    """The corpus as a Ray Data dataset of `id` (string) and `text` columns."""
    import ray.data

    columns = [options.id_column, options.text_column]
    if format_of(files, options) == "parquet":
        dataset = ray.data.read_parquet(files, columns=columns)
    else:
        dataset = ray.data.read_json(files, lines=True)
    return dataset.map_batches(_IdAndText(options.id_column, options.text_column), batch_format="pyarrow")


class _IdAndText:
    """Keeps the id and text columns under fixed names, ids as strings (BEIR ids may be numbers)."""

    def __init__(self, id_column: str, text_column: str):
        self.id_column, self.text_column = id_column, text_column

    def __call__(self, table):
        import pyarrow as pa

        missing = [c for c in (self.id_column, self.text_column) if c not in table.column_names]
        if missing:
            raise MoaiError(f"the corpus has no column {', '.join(map(repr, missing))} "
                            f"(columns: {', '.join(table.column_names)}); name them with --id-column / --text-column")
        ids = table.column(self.id_column).cast(pa.string())
        return pa.table({"id": ids, "text": table.column(self.text_column).cast(pa.string())})
