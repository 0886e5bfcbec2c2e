"""The embed job: plan, verify, embed the pending shards on Ray Data, record.

    1. the artifact: a local spec, loaded here with its admission required, and gated on the
       built-in probe set against `reference` (the gate table's gate for its kind and precision):
       nothing is written when it fails;
    2. the plan: the input files and the shard count, fixed by the first run and kept in the
       output's manifest; a rerun by another artifact, with other dims/dtype, or over changed input
       files is refused (vectors of two models never mix in one output);
    3. every id read once (duplicates are an error naming them), then only the shards not yet
       complete are read, embedded by one actor per worker and written atomically;
    4. the manifest (per-shard sha256 and rows, the admission that served, timings) and the report.

Not yet: `--incremental` (re-embed only rows whose text changed); reference vectors recorded in
the artifact (the probes are compared with the reference spec given, embedded now).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts.admission import MANIFEST_FILE, read_manifest, sha256_file
from ..artifacts.directories import write_json
from ..artifacts.kinds import load_embedder, parse_spec
from ..core.errors import MoaiError, VerificationFailed
from ..gates.parity import ReferenceFigures
from ..gates.table import GateOverrides
from .corpus import CorpusOptions, fingerprint, input_files, read_corpus
from .shards import complete_shards, shard_name, shard_of
from .worker import EmbedBatches, write_shard_group

OUTPUT_MANIFEST = "embed_manifest.json"
OUTPUT_REPORT = "embed_report.json"
# In-process kinds: a Ray worker loads the artifact itself (server kinds would start a server each)
IN_PROCESS_KINDS = ("onnx", "torch", "engine", "st")


@dataclass
class EmbedOptions:
    reference: str | None = None  # the gate's reference spec (e.g. BASE+ADAPTER); required
    corpus: CorpusOptions = field(default_factory=CorpusOptions)
    dims: int | None = None  # Matryoshka: the first dims components, renormalized
    float16: bool = False  # store the vectors as float16 (computed in the artifact's precision)
    workers: int = 2  # embedding actors, one Embedder each
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    ray_address: str | None = None  # None: a local Ray started for the job; auto or ray://HOST:PORT joins one
    shard_rows: int = 10000  # rows per output shard (the plan's shard count: rows / shard_rows, rounded up)
    batch_rows: int = 256  # rows handed to a worker at once (the Embedder cuts its own forward passes)
    overrides: GateOverrides = field(default_factory=GateOverrides)
    log: object = print


def run_embed(spec: str, paths: list[str], out: Path, options: EmbedOptions) -> dict:
    """Embed the corpus `paths` with the artifact `spec` into Parquet shards under `out`; returns
    the report (also written to out/embed_report.json)."""
    started = time.perf_counter()
    log = options.log
    kind, location, _ = parse_spec(spec)
    if kind.name not in IN_PROCESS_KINDS:
        raise MoaiError(f"{spec}: embed loads the artifact in each worker; give a local spec "
                        f"({', '.join(k + ':DIR' for k in IN_PROCESS_KINDS)})")
    if not options.reference:
        raise MoaiError("embed gates the artifact before writing: pass --reference (e.g. BASE+ADAPTER)")
    artifact_manifest = Path(location) / MANIFEST_FILE
    if not artifact_manifest.is_file():
        raise MoaiError(f"{location}: no {MANIFEST_FILE}; embed takes artifacts written (and gated) by moai-export")
    files = input_files(paths)
    out = Path(out)
    identity = {"spec": spec, "manifest_sha256": sha256_file(artifact_manifest), "dims": options.dims,
                "float16": options.float16}
    previous = _previous_plan(out, identity, files, options.corpus)

    gate_summary, admission, contract = _gate(spec, kind, options, log)
    timings = {"verify_s": round(time.perf_counter() - started, 3)}

    ray, own_ray = _ray(options)
    try:
        dataset = read_corpus(files, options.corpus)
        rows = _check_ids(ray, dataset) if previous is None else previous["rows"]
        shards = previous["shards"] if previous else max(1, -(-rows // options.shard_rows))
        plan = {**identity, "artifact": location, "contract": contract, "admitted_by": admission,
                "gate": gate_summary, "inputs": fingerprint(files), "corpus": vars(options.corpus),
                "rows": rows, "shards": shards, "complete": False}
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / OUTPUT_MANIFEST, plan)
        pending = sorted(set(range(shards)) - complete_shards(out, shards))
        log(f"{rows} rows in {shards} shards; {shards - len(pending)} complete, embedding {len(pending)}")
        embed_started = time.perf_counter()
        written = _embed_pending(ray, dataset, spec, out, shards, pending, options) if pending else []
        timings["embed_s"] = round(time.perf_counter() - embed_started, 3)
    finally:
        if own_ray:
            ray.shutdown()
    return _record(out, plan, written, timings, started)


def _previous_plan(out: Path, identity: dict, files: list[str], corpus: CorpusOptions) -> dict | None:
    """The plan of an earlier run into `out`, when it may be resumed; refusals name why not."""
    path = out / OUTPUT_MANIFEST
    if not path.is_file():
        if out.exists() and any(out.iterdir()):
            raise MoaiError(f"{out}: exists and holds no {OUTPUT_MANIFEST}; embed into a new or empty directory")
        return None
    plan = json.loads(path.read_text(encoding="utf-8"))
    for key, value in identity.items():
        if plan.get(key) != value:
            what = "another artifact" if key in ("spec", "manifest_sha256") else f"{key}={plan.get(key)}"
            raise MoaiError(f"{out} holds vectors written by {what} ({key}: {plan.get(key)!r}, now {value!r}); "
                            "vectors of two configurations never mix: embed into a new directory")
    if plan.get("inputs") != fingerprint(files) or plan.get("corpus") != vars(corpus):
        raise MoaiError(f"{out}: the corpus files or columns changed since this output was planned; "
                        "embed into a new directory (--incremental is not implemented yet)")
    return plan


def _gate(spec: str, kind, options: EmbedOptions, log) -> tuple[dict, dict | None, dict]:
    """Gate the job's Embedder (loaded as the workers load it, admission required) on the probe set
    against the reference; (gate summary, the admission entry that serves, contract)."""
    sized = {"dims": options.dims} if options.dims else {}
    log(f"verifying {spec} against {options.reference} on the probe set")
    with load_embedder(options.reference, name="reference", **sized) as reference:
        figures = ReferenceFigures(reference)
    with load_embedder(spec, admission="require", **sized) as candidate:
        gate = options.overrides.apply(kind.gate_family(candidate), candidate.precision)
        report = figures.gate_with(candidate, gate)
        config, directory, contract = candidate.serving, candidate.artifact_dir, candidate.contract.to_dict()
    summary = {"reference": options.reference, "gate": gate.to_dict(), **report.parity.summary(),
               "passed": report.passed, "failures": report.reasons()}
    if not report.passed:
        raise VerificationFailed(f"{spec} fails its gate against {options.reference}, nothing written: "
                                 + "; ".join(report.reasons()[:3]), summary)
    admitted = (read_manifest(directory) or {}).get("admitted_for", []) if directory else []
    admission = next((entry for entry in admitted if config is not None and config.matches(entry)), None)
    return summary, admission, contract


def _ray(options: EmbedOptions):
    """(ray, whether this job started it): joins `ray_address`, reuses a Ray already running in
    this process, or starts a local one sized for the workers (one CPU more: reads and writes)."""
    import ray

    if options.ray_address:
        ray.init(address=options.ray_address)
        return ray, True
    if ray.is_initialized():
        return ray, False
    ray.init(num_cpus=int(options.workers * options.cpus_per_worker) + 1,
             num_gpus=int(options.workers * options.gpus_per_worker), include_dashboard=False)
    return ray, True


def _check_ids(ray, dataset) -> int:
    """The row count; every id once (duplicates are named, up to ten)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pa.concat_tables(ray.get(dataset.select_columns(["id"]).to_arrow_refs())).column("id")
    counts = pc.value_counts(ids)
    repeated = [v.as_py() for v, n in zip(counts.field("values"), counts.field("counts")) if n.as_py() > 1]
    if repeated:
        raise MoaiError(f"duplicate ids in the corpus ({len(repeated)}): {', '.join(map(str, repeated[:10]))}; "
                        "every id must be unique (a vector store keys on it)")
    return len(ids)


class _AssignShards:
    """Adds each row's shard and keeps only the rows of pending shards."""

    def __init__(self, shards: int, pending: list[int]):
        self.shards, self.pending = shards, pending

    def __call__(self, table):
        import numpy as np
        import pyarrow as pa

        shard = (shard_of(table.column("id").to_pylist()) % np.uint64(self.shards)).astype(np.int64)
        table = table.append_column("shard", pa.array(shard))
        return table.filter(pa.array(np.isin(shard, self.pending)))


def _embed_pending(ray, dataset, spec: str, out: Path, shards: int, pending: list[int], options: EmbedOptions):
    embedded = dataset.map_batches(_AssignShards(shards, pending), batch_format="pyarrow").map_batches(
        EmbedBatches, fn_constructor_args=(spec, options.dims), compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker or None,
        batch_size=options.batch_rows, batch_format="pyarrow")
    written = embedded.groupby("shard").map_groups(
        write_shard_group, fn_kwargs={"out": str(out), "shards": shards, "float16": options.float16},
        batch_format="pyarrow")
    try:
        return written.take_all()
    except Exception as exc:
        raise _worker_error(exc) from None


def _worker_error(exc: Exception) -> Exception:
    """A worker's MoaiError (a refused admission, a missing column) as the user's one-line error: Ray
    wraps it (a task error keeps it as its cause; an actor that died in __init__ keeps only its text)."""
    cause = exc
    while cause is not None and not isinstance(cause, MoaiError):
        cause = cause.__cause__ or getattr(cause, "cause", None)
    if cause is not None:
        return cause
    found = re.search(r"(?:NotAdmitted|MoaiError): (.+)", str(exc))
    return MoaiError(f"a worker refused: {found.group(1).strip()}") if found else exc


def _record(out: Path, plan: dict, written: list[dict], timings: dict, started: float) -> dict:
    """The manifest (every shard's rows and sha256; complete only when every id is in exactly one)
    and the report of this run's rates, overall and per worker."""
    import pyarrow.parquet as pq

    shards = []
    for k in range(plan["shards"]):
        path = out / shard_name(k, plan["shards"])
        shards.append({"file": path.name, "rows": pq.ParquetFile(path).metadata.num_rows,
                       "sha256": sha256_file(path)})
    stored = sum(s["rows"] for s in shards)
    if stored != plan["rows"]:
        raise MoaiError(f"{out}: the shards hold {stored} rows, the corpus {plan['rows']}; rerun to complete")
    timings["total_s"] = round(time.perf_counter() - started, 3)
    write_json(out / OUTPUT_MANIFEST, {**plan, "complete": True, "shard_files": shards, "timings": timings})
    rows = sum(w["rows"] for w in written)
    tokens = sum(w["tokens"] for w in written)
    per_worker: dict[str, list[float]] = {}
    for w in written:
        for worker, (n, t, seconds) in json.loads(w["workers"]).items():
            figures = per_worker.setdefault(worker, [0, 0, 0.0])
            figures[0], figures[1], figures[2] = figures[0] + n, figures[1] + t, figures[2] + seconds
    seconds = timings.get("embed_s") or 0.0
    report = {"rows_total": plan["rows"], "rows_embedded": rows, "shards_written": len(written),
              "shards_skipped": plan["shards"] - len(written), "tokens": tokens, "timings": timings,
              "docs_per_s": rows / seconds if seconds else None, "tokens_per_s": tokens / seconds if seconds else None,
              "workers": {name: {"rows": n, "tokens": t, "embed_s": round(s, 3),
                                 "docs_per_s": n / s if s else None, "tokens_per_s": t / s if s else None}
                          for name, (n, t, s) in per_worker.items()}}
    write_json(out / OUTPUT_REPORT, report)
    return report
