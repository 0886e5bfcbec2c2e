"""The embed job: verify, plan, stage, embed the pending shards on Ray Data, record.

    1. what the vectors must match: the probe vectors recorded beside the artifact at export
       (or, with --reference, the reference spec's, embedded now); when the workers run on this
       machine's kind of device, the driver gates the artifact first (admission required, then
       the gate table's gate for its kind and precision): nothing is written when it fails;
    2. the plan: the input files and the shard count, fixed by the first run and kept in the
       output's manifest; a rerun by another artifact, with other dims/dtype, or over changed input
       files is refused (vectors of two models never mix in one output);
    3. every Ray node is asked whether it reads the same artifact and the corpus and writes into
       the output (nodes.py): a cluster without a shared path is refused up front; then staging
       (staging.py): Ray Data reads the corpus once and writes each shard's ids and texts;
       duplicate ids are found there and named;
    4. embedding: the pending shards go to a pool of actors (worker.py), one Embedder each, each
       checking its admission and the probe gate where it runs; a shard is written whole as soon
       as it is done, so a crash loses only the shards in flight and a rerun embeds only the rest.
       Ray restarts a killed worker and retries its shard (a shard's rewrite is the same rows);
    5. the manifest (per-shard sha256 and rows, the admission that served, timings) and the report.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts.admission import MANIFEST_FILE, read_manifest, sha256_file
from ..artifacts.directories import write_json
from ..artifacts.kinds import load_embedder, parse_spec
from ..core.errors import MoaiError, VerificationFailed
from ..gates.parity import ReferenceFigures
from ..gates.table import GateOverrides
from ..gates.verification import ExpectedVectors, read_reference_vectors
from .corpus import CorpusOptions, fingerprint, input_files, read_corpus
from .nodes import check_nodes
from .shards import complete_shards, shard_name
from .staging import STAGING_DIR, stage
from .worker import WORKERS_DIR, EmbedShards

OUTPUT_MANIFEST = "embed_manifest.json"
OUTPUT_REPORT = "embed_report.json"
# In-process kinds: a Ray worker loads the artifact itself (server kinds would start a server each)
IN_PROCESS_KINDS = ("onnx", "torch", "engine", "st")
SHARDS_PER_WORKER = 4  # the fewest shards a plan has per worker (the last shard does not leave the others idle)


@dataclass
class EmbedOptions:
    reference: str | None = None  # a reference spec (e.g. BASE+ADAPTER); None: the vectors recorded at export
    corpus: CorpusOptions = field(default_factory=CorpusOptions)
    dims: int | None = None  # Matryoshka: the first dims components, renormalized
    float16: bool = False  # store the vectors as float16 (computed in the artifact's precision)
    workers: int = 2  # embedding actors, one Embedder each
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    ray_address: str | None = None  # None: a local Ray started for the job; auto or ray://HOST:PORT joins one
    shard_rows: int = 2000  # rows per output shard (shards: rows / shard_rows rounded up, at least 4 a worker)
    incremental: Path | None = None  # an earlier output of this artifact: reuse the vectors of unchanged texts
    progress: bool = True  # a progress bar of rows, docs/s and ETA (per shard written)
    overrides: GateOverrides = field(default_factory=GateOverrides)
    log: object = print

    @property
    def workers_run_here(self) -> bool:
        """Whether the driver can load the artifact as the workers will: a local Ray on this
        machine's CPUs (a GPU worker, or a cluster's, is checked only where it runs)."""
        return self.ray_address is None and not self.gpus_per_worker


def run_embed(spec: str, paths: list[str], out: Path, options: EmbedOptions) -> dict:
    """Embed the corpus `paths` with the artifact `spec` into Parquet shards under `out`; returns
    the report (also written to out/embed_report.json)."""
    started = time.perf_counter()
    log = options.log
    kind, location, _ = parse_spec(spec)
    if kind.name not in IN_PROCESS_KINDS:
        raise MoaiError(f"{spec}: embed loads the artifact in each worker; give a local spec "
                        f"({', '.join(k + ':DIR' for k in IN_PROCESS_KINDS)})")
    artifact_manifest = Path(location) / MANIFEST_FILE
    if not artifact_manifest.is_file():
        raise MoaiError(f"{location}: no {MANIFEST_FILE}; embed takes artifacts written (and gated) by moai-export")
    files = input_files(paths)
    out = Path(out)
    identity = {"spec": spec, "manifest_sha256": sha256_file(artifact_manifest), "dims": options.dims,
                "float16": options.float16}
    previous_output = _previous_output(options.incremental, identity) if options.incremental else None
    plan = _previous_plan(out, identity, files, options.corpus, options.incremental)

    expected = _expected_vectors(location, options, log)
    gate_summary, admission = _gate(spec, kind, expected, options, log)
    timings = {"verify_s": round(time.perf_counter() - started, 3)}

    ray, own_ray = _ray(options)
    ray.data.DataContext.get_current().enable_progress_bars = False  # one bar, in rows: the job's own
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plans and per-operator lines are not the user's
    try:
        out.mkdir(parents=True, exist_ok=True)
        nodes = check_nodes(ray, artifact_manifest, identity["manifest_sha256"], files, out)
        log(f"{nodes} Ray node(s) read the artifact and the corpus and write into {out}")
        if plan is None or not plan.get("staged"):
            shards = (previous_output["shards"] if previous_output else None) or (plan or {}).get("shards")
            plan = {**identity, "artifact": location, "contract": json.loads(
                        (Path(location) / "moai_contract.json").read_text(encoding="utf-8"))
                    if (Path(location) / "moai_contract.json").is_file() else None,
                    "admitted_by": admission, "gate": gate_summary, "inputs": fingerprint(files),
                    "corpus": vars(options.corpus), "incremental_from": _source(options.incremental),
                    "rows": None, "shards": shards, "staged": False, "complete": False}
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / OUTPUT_MANIFEST, plan)
            staging_started = time.perf_counter()
            plan["rows"], plan["shards"] = _stage(ray, files, out, plan["shards"], options, log)
            plan["staged"] = True
            write_json(out / OUTPUT_MANIFEST, plan)
            timings["stage_s"] = round(time.perf_counter() - staging_started, 3)
        shards = plan["shards"]
        pending = sorted(set(range(shards)) - complete_shards(out, shards))
        log(f"{plan['rows']} rows in {shards} shards; {shards - len(pending)} complete, embedding {len(pending)}")
        embed_started = time.perf_counter()
        written = _embed_pending(ray, spec, expected, out, plan, pending, options) if pending else []
        timings["embed_s"] = round(time.perf_counter() - embed_started, 3)
    except Exception as exc:
        mapped = _worker_error(exc)  # a MoaiError raised inside Ray (a missing column, a refusal): one line
        if mapped is exc:
            raise
        raise mapped from None
    finally:
        if own_ray:
            ray.shutdown()
    return _record(out, plan, written, timings, started)


def _source(incremental: Path | None) -> dict | None:
    if incremental is None:
        return None
    return {"path": str(Path(incremental).resolve()),
            "manifest_sha256": sha256_file(Path(incremental) / OUTPUT_MANIFEST)}


def _previous_output(previous: Path, identity: dict) -> dict:
    """The earlier output --incremental reuses vectors from: complete, and written by the same
    artifact with the same dims and dtype (vectors of two models never mix)."""
    path = Path(previous) / OUTPUT_MANIFEST
    if not path.is_file():
        raise MoaiError(f"--incremental {previous}: no {OUTPUT_MANIFEST}; give the directory of an earlier embed")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not manifest.get("complete"):
        raise MoaiError(f"--incremental {previous}: that output is not complete; finish it first (rerun its command)")
    for key in ("manifest_sha256", "dims", "float16"):
        if manifest.get(key) != identity[key]:
            what = "another artifact" if key == "manifest_sha256" else f"{key}={manifest.get(key)}"
            raise MoaiError(f"--incremental {previous}: written by {what} ({key}: {manifest.get(key)!r}, now "
                            f"{identity[key]!r}); its vectors cannot be reused: embed without --incremental")
    return manifest


def _previous_plan(out: Path, identity: dict, files: list[str], corpus: CorpusOptions,
                   incremental: Path | None) -> dict | None:
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
        raise MoaiError(f"{out}: the corpus files or columns changed since this output was planned; embed into a "
                        f"new directory (--incremental {out} reuses the vectors of unchanged texts)")
    if plan.get("incremental_from") != _source(incremental):
        raise MoaiError(f"{out}: planned with --incremental {(plan.get('incremental_from') or {}).get('path')}; "
                        "rerun it with the same --incremental")
    return plan


def _expected_vectors(location: str, options: EmbedOptions, log) -> ExpectedVectors | ReferenceFigures:
    """What every worker's probe vectors must match: the vectors recorded at export, or those of
    --reference embedded now (its ReferenceFigures: the driver's gate also measures top-10 agreement)."""
    sized = {"dims": options.dims} if options.dims else {}
    if options.reference:
        log(f"embedding the probe set with the reference {options.reference}")
        with load_embedder(options.reference, name="reference", **sized) as reference:
            return ReferenceFigures(reference)
    try:
        recorded = read_reference_vectors(Path(location))
    except MoaiError as exc:
        raise MoaiError(f"{exc}; or pass --reference (e.g. BASE+ADAPTER) to embed the probe set now") from None
    log(f"the probe vectors recorded in {recorded.directory} (reference: {recorded.reference})")
    return recorded


def _as_expected(expected, reference: str | None) -> ExpectedVectors:
    if isinstance(expected, ExpectedVectors):
        return expected
    return ExpectedVectors(None, reference or expected.name, list(expected.probes), expected.vectors)


def _gate(spec: str, kind, expected, options: EmbedOptions, log) -> tuple[dict, dict | None]:
    """Gate the job's Embedder on this machine (loaded as the workers load it, admission required)
    when the workers run here; (gate summary, the admission entry that serves)."""
    if not options.workers_run_here:
        log("the workers run elsewhere (a cluster or GPUs): each checks its admission and the probe gate where "
            "it runs, before it writes anything")
        return {"reference": _as_expected(expected, options.reference).reference, "checked": "by each worker"}, None
    sized = {"dims": options.dims} if options.dims else {}
    log(f"verifying {spec} on the probe set")
    with load_embedder(spec, admission="require", **sized) as candidate:
        gate = options.overrides.apply(kind.gate_family(candidate), candidate.precision)
        report = expected.gate_with(candidate, gate) if isinstance(expected, ReferenceFigures) \
            else expected.gate(candidate, gate)
        config, directory = candidate.serving, candidate.artifact_dir
    reference = _as_expected(expected, options.reference).reference
    summary = {"reference": reference, "gate": gate.to_dict(), **report.parity.summary(),
               "passed": report.passed, "failures": report.reasons()}
    if not report.passed:
        raise VerificationFailed(f"{spec} fails its gate against {reference}, nothing written: "
                                 + "; ".join(report.reasons()[:3]), summary)
    admitted = (read_manifest(directory) or {}).get("admitted_for", []) if directory else []
    admission = next((entry for entry in admitted if config is not None and config.matches(entry)), None)
    return summary, admission


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


def _stage(ray, files: list[str], out: Path, shards: int | None, options: EmbedOptions, log) -> tuple[int, int]:
    """Stage the corpus into its shards; (rows, shards). Without a shard count from an earlier plan
    (or --incremental's output), the rows are counted first to size the shards."""
    dataset = read_corpus(files, options.corpus)
    if shards is None:  # at least SHARDS_PER_WORKER a worker, so a small corpus still spreads
        shards = max(SHARDS_PER_WORKER * options.workers, -(-dataset.count() // options.shard_rows))
    log(f"staging the corpus into {shards} shards")
    rows = stage(dataset, out, shards)
    if not rows:  # most likely the wrong file: say so rather than write empty shards
        shutil.rmtree(out / STAGING_DIR, ignore_errors=True)
        (out / OUTPUT_MANIFEST).unlink(missing_ok=True)
        raise MoaiError(f"the corpus has no rows ({', '.join(files[:3])}{' ...' if len(files) > 3 else ''}): "
                        "nothing to embed")
    return rows, shards


def _embed_pending(ray, spec: str, expected, out: Path, plan: dict, pending: list[int], options: EmbedOptions):
    """Embed and write the pending shards, one shard per actor call, streamed: the progress bar
    moves as each shard is written."""
    from tqdm import tqdm

    shards = plan["shards"]
    shutil.rmtree(out / WORKERS_DIR, ignore_errors=True)  # this run's actor starts only
    items = ray.data.from_items([{"shard": k} for k in pending], override_num_blocks=len(pending))
    embedded = items.map_batches(
        EmbedShards, fn_constructor_args=(spec, options.dims, _as_expected(expected, options.reference),
                                          options.overrides, str(out), shards, options.float16,
                                          str(options.incremental) if options.incremental else None,
                                          options.cpus_per_worker),
        compute=ray.data.ActorPoolStrategy(size=options.workers), batch_size=1, batch_format="numpy",
        num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker or None)
    written = []
    rows_pending = plan["rows"] - sum(_rows(out / shard_name(k, shards)) for k in set(range(shards)) - set(pending))
    with tqdm(total=rows_pending, unit="docs", desc="embed", disable=not options.progress, smoothing=0.1) as bar:
        for row in embedded.iter_rows():
            written.append({key: (value.item() if hasattr(value, "item") else value) for key, value in row.items()})
            bar.update(int(row["rows"]))
    return written


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _worker_error(exc: Exception) -> Exception:
    """A worker's MoaiError (a refused admission, a missing column) as the user's one-line error: Ray
    wraps it (a task error keeps it as its cause; an actor that died in __init__ keeps only its text)."""
    cause = exc
    while cause is not None and not isinstance(cause, MoaiError):
        cause = cause.__cause__ or getattr(cause, "cause", None)
    if cause is not None:
        return cause
    found = re.search(r"(NotAdmitted|VerificationFailed|MoaiError): (.+)", str(exc))
    if not found:
        return exc
    refused = found.group(1) != "MoaiError"  # an admission or a probe gate, in the worker
    return MoaiError(("a worker refused: " if refused else "") + found.group(2).strip())


def _record(out: Path, plan: dict, written: list[dict], timings: dict, started: float) -> dict:
    """The manifest (every shard's rows and sha256; complete only when every id is in exactly one)
    and the report of this run's rates, overall and per worker."""
    shards = []
    for k in range(plan["shards"]):
        path = out / shard_name(k, plan["shards"])
        shards.append({"file": path.name, "rows": _rows(path), "sha256": sha256_file(path)})
    stored = sum(s["rows"] for s in shards)
    if stored != plan["rows"]:
        raise MoaiError(f"{out}: the shards hold {stored} rows, the corpus {plan['rows']}; rerun to complete")
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)  # every shard is written: the texts are not needed
    timings["total_s"] = round(time.perf_counter() - started, 3)
    # staged: False (its texts are gone), so a rerun after a shard was lost stages the corpus again
    write_json(out / OUTPUT_MANIFEST, {**plan, "staged": False, "complete": True, "shard_files": shards,
                                       "timings": timings})
    per_worker: dict[str, list[float]] = {}
    for w in written:
        figures = per_worker.setdefault(w["worker"], [0, 0, 0.0])
        figures[0], figures[1], figures[2] = figures[0] + w["embedded"], figures[1] + w["tokens"], figures[2] + w["seconds"]
    embedded = sum(w["embedded"] for w in written)
    tokens = sum(w["tokens"] for w in written)
    seconds = timings.get("embed_s") or 0.0
    starts = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / WORKERS_DIR).glob("*.json"))]
    shutil.rmtree(out / WORKERS_DIR, ignore_errors=True)
    report = {"rows_total": plan["rows"], "rows_embedded": embedded, "rows_reused": sum(w["reused"] for w in written),
              "shards_written": len(written), "shards_skipped": plan["shards"] - len(written), "tokens": tokens,
              "timings": timings, "docs_per_s": embedded / seconds if seconds else None,
              "tokens_per_s": tokens / seconds if seconds else None,
              # every actor this run started (a worker Ray restarted adds one)
              "worker_starts": starts,
              "workers": {name: {"rows": n, "tokens": t, "embed_s": round(s, 3),
                                 "docs_per_s": n / s if s else None, "tokens_per_s": t / s if s else None}
                          for name, (n, t, s) in per_worker.items()}}
    write_json(out / OUTPUT_REPORT, report)
    return report
