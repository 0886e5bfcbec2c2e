"""`moai-export embed` on a local Ray with 2 workers of 1 CPU: every id exactly once, vectors equal to
a single-process encode, shards written as they are done so a rerun resumes (after a driver SIGKILL;
a worker SIGKILLed mid-run is restarted by Ray), `--incremental` re-embeds only changed texts, and
the refusals (duplicate ids, another artifact's output, a changed corpus, an unadmitted
configuration, a failing probe gate in the driver or in a worker) write nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from moai_export.artifacts.kinds import load_embedder  # noqa: E402
from moai_export.core.errors import MoaiError, VerificationFailed  # noqa: E402
from moai_export.embed_job.job import OUTPUT_MANIFEST, EmbedOptions, run_embed  # noqa: E402
from moai_export.embed_job.shards import embedding_matrix  # noqa: E402
from moai_export.gates.parity import cosine_rows  # noqa: E402

TEXTS = [f"문서 {i}: BC카드 연회비와 할부 수수료 안내 " + "추가 설명 " * (i % 7) for i in range(40)]
# enough work that a kill lands while shards are pending: 600 documents of ~60-250 tokens
LONG_TEXTS = [f"문서 {i}: BC카드 연회비, 할부 수수료, 리볼빙 결제 안내. " + "카드 대금 결제일과 이용 한도 설명. " * (5 + i % 20)
              for i in range(600)]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _write_corpus(path, texts, ids=None):
    ids = ids or [f"doc-{i}" for i in range(len(texts))]
    path.write_text("".join(json.dumps({"_id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in zip(ids, texts)),
                    encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    return _write_corpus(tmp_path / "corpus.jsonl", TEXTS)


def _options(reference=None, **extra):
    """Gated on the probe vectors recorded beside the artifact, unless a reference spec is given."""
    return EmbedOptions(**{"reference": reference, "workers": 2, "cpus_per_worker": 1, "shard_rows": 10,
                           "progress": False, "log": lambda m: None, **extra})


def _read(out):
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    return table.column("id").to_pylist(), embedding_matrix(table)


def _single_process(spec, texts, ids, **sized):
    """What one process's Embedder.encode gives for the rows `ids` (doc-N is texts[N])."""
    with load_embedder(spec, **sized) as single:
        return single.encode([texts[int(i.split("-")[1])] for i in ids], "document")


def test_two_workers_write_every_id_once_equal_to_a_single_process_and_a_rerun_resumes(
        local_ray, onnx_fp32_dir, merged_dir, corpus, tmp_path):
    out = tmp_path / "vectors"
    spec = f"onnx:{onnx_fp32_dir}"
    report = run_embed(spec, [str(corpus)], out, _options())
    ids, vectors = _read(out)
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(40)) and len(set(ids)) == 40
    assert report["rows_embedded"] == 40 and report["shards_written"] == 8 and len(report["worker_starts"]) == 2
    assert cosine_rows(vectors, _single_process(spec, TEXTS, ids)).min() >= 0.99999
    manifest = json.loads((out / OUTPUT_MANIFEST).read_text())
    assert manifest["complete"] and manifest["rows"] == 40 and manifest["admitted_by"]["runtime"] == "onnxruntime"
    assert manifest["gate"]["passed"] and manifest["gate"]["reference"]  # the recorded probe vectors' reference
    assert not (out / ".staging").exists() and not (out / ".workers").exists()

    shards = sorted(out.glob("part-*.parquet"))
    kept = {p.name: p.read_bytes() for p in shards[:1] + shards[2:]}
    shards[1].unlink()
    rerun = run_embed(spec, [str(corpus)], out, _options())
    assert rerun["shards_written"] == 1 and rerun["shards_skipped"] == 7 and rerun["rows_embedded"] < 40
    assert {name: (out / name).read_bytes() for name in kept} == kept  # complete shards untouched
    ids_again, vectors_again = _read(out)
    assert ids_again == ids and cosine_rows(vectors_again, vectors).min() >= 0.99999

    with pytest.raises(MoaiError, match="another artifact"):  # vectors of two models never mix
        run_embed(f"torch:{merged_dir}", [str(corpus)], out, _options())
    _write_corpus(corpus, TEXTS[:-1] + ["바뀐 문서"])
    with pytest.raises(MoaiError, match="corpus files or columns changed"):
        run_embed(spec, [str(corpus)], out, _options())


def test_the_command_writes_matryoshka_float16_vectors(local_ray, onnx_fp32_dir, merged_dir, corpus, tmp_path):
    from click.testing import CliRunner

    from moai_export.commands.export_cli import main

    out = tmp_path / "vectors"
    result = CliRunner().invoke(main, ["embed", f"onnx:{onnx_fp32_dir}", str(corpus), "--out", str(out),
                                       "--workers", "2", "--dims", "32", "--float16", "--shard-rows", "20"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: halffloat>[32]"
    assert table.column("tokens").to_numpy().min() > 1 and table.schema.field("text_hash").type.byte_width == 16
    ids, vectors = _read(out)
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=1e-2)
    expected = _single_process(f"onnx:{onnx_fp32_dir}", TEXTS, ids, dims=32)
    assert cosine_rows(vectors, expected).min() >= 0.999
    assert json.loads((out / "embed_report.json").read_text())["rows_embedded"] == 40


def test_incremental_reembeds_only_changed_texts(local_ray, onnx_fp32_dir, merged_dir, corpus, tmp_path):
    spec = f"onnx:{onnx_fp32_dir}"
    first = tmp_path / "v1"
    run_embed(spec, [str(corpus)], first, _options())
    # 3 texts changed, doc-39 removed, 2 new documents
    texts = list(TEXTS[:39]) + ["새 문서 A: 체크카드 발급 안내", "새 문서 B: 해외 결제 수수료"]
    for i in (2, 11, 30):
        texts[i] = TEXTS[i] + " 개정된 약관 반영"
    ids = [f"doc-{i}" for i in range(39)] + ["doc-40", "doc-41"]
    changed = _write_corpus(tmp_path / "changed.jsonl", texts, ids)
    second = tmp_path / "v2"
    report = run_embed(spec, [str(changed)], second, _options(incremental=first))
    assert report["rows_total"] == 41 and report["rows_embedded"] == 5 and report["rows_reused"] == 36
    got_ids, vectors = _read(second)
    assert sorted(got_ids) == sorted(ids)
    text_of = dict(zip(ids, texts))
    with load_embedder(spec) as single:
        expected = single.encode([text_of[i] for i in got_ids], "document")
    assert cosine_rows(vectors, expected).min() >= 0.99999  # changed texts embedded anew, the rest reused
    assert json.loads((second / OUTPUT_MANIFEST).read_text())["incremental_from"]["path"] == str(first.resolve())
    with pytest.raises(MoaiError, match="written by another artifact"):  # never another model's vectors
        run_embed(f"torch:{merged_dir}", [str(changed)], tmp_path / "v3", _options(incremental=first))


def test_duplicate_ids_are_named_and_nothing_is_written(local_ray, onnx_fp32_dir, corpus, tmp_path):
    with corpus.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "doc-7", "text": "again"}) + "\n")
    out = tmp_path / "vectors"
    with pytest.raises(MoaiError, match="duplicate ids.*doc-7"):
        run_embed(f"onnx:{onnx_fp32_dir}", [str(corpus)], out, _options())
    assert not list(out.glob("part-*")) and not (out / ".staging").exists()


def test_an_empty_corpus_is_an_error_not_empty_shards(local_ray, onnx_fp32_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    out = tmp_path / "vectors"
    with pytest.raises(MoaiError, match="the corpus has no rows"):
        run_embed(f"onnx:{onnx_fp32_dir}", [str(empty)], out, _options())
    assert not list(out.glob("part-*")) and not (out / OUTPUT_MANIFEST).exists()


def _unadmitted_copy(onnx_fp32_dir, tmp_path):
    copy = tmp_path / "onnx"
    shutil.copytree(onnx_fp32_dir, copy)
    manifest = json.loads((copy / "moai_manifest.json").read_text())
    manifest["admitted_for"] = []
    (copy / "moai_manifest.json").write_text(json.dumps(manifest))
    return copy


def test_an_unadmitted_artifact_is_refused(onnx_fp32_dir, corpus, tmp_path):
    copy = _unadmitted_copy(onnx_fp32_dir, tmp_path)
    with pytest.raises(MoaiError, match="not verified for onnxruntime"):
        run_embed(f"onnx:{copy}", [str(corpus)], tmp_path / "vectors", _options())
    assert not (tmp_path / "vectors").exists()


def test_a_worker_refuses_an_unadmitted_configuration_where_it_runs(local_ray, onnx_fp32_dir, corpus, tmp_path,
                                                                   monkeypatch):
    """The driver's check passed (here: skipped, as for workers on a cluster), but the configuration
    a worker loads was never admitted: the worker refuses, loudly, and no shard is written."""
    from moai_export.embed_job import job

    copy = _unadmitted_copy(onnx_fp32_dir, tmp_path)
    monkeypatch.setattr(job, "_gate", lambda *args: ({}, None))
    with pytest.raises(MoaiError, match="a worker refused.*not verified for onnxruntime"):
        run_embed(f"onnx:{copy}", [str(corpus)], tmp_path / "vectors", _options())
    assert not list((tmp_path / "vectors").glob("part-*"))


def test_a_failing_probe_gate_refuses_before_writing(onnx_fp32_dir, example_dir, corpus, tmp_path):
    # the base model without the adapter as the reference: the artifact cannot match it
    with pytest.raises(VerificationFailed, match="fails its gate"):
        run_embed(f"onnx:{onnx_fp32_dir}", [str(corpus)], tmp_path / "vectors",
                  _options(reference=f"torch:{example_dir / 'base'}"))
    assert not (tmp_path / "vectors").exists()


def test_a_worker_runs_the_probe_gate_where_it_runs(local_ray, onnx_fp32_dir, corpus, tmp_path, monkeypatch):
    """Workers on a cluster are gated where they run: with the driver's gate skipped, recorded
    probe vectors that the artifact does not reproduce (here: rotated) stop every worker."""
    from moai_export.embed_job import job

    copy = tmp_path / "onnx"
    shutil.copytree(onnx_fp32_dir, copy)
    recorded = job.read_reference_vectors(copy)
    recorded.vectors = np.roll(recorded.vectors, 1, axis=0)  # each probe expects its neighbour's vector
    monkeypatch.setattr(job, "read_reference_vectors", lambda _: recorded)
    monkeypatch.setattr(job, "_gate", lambda *args: ({}, None))
    with pytest.raises(MoaiError, match="a worker refused.*fails its probe gate"):
        run_embed(f"onnx:{copy}", [str(corpus)], tmp_path / "vectors", _options())
    assert not list((tmp_path / "vectors").glob("part-*"))


def test_the_engine_on_cpu_with_two_workers(local_ray, merged_dir, corpus, tmp_path):
    """`engine:` (packed, padding-free) once admitted on CPU: 2 workers, vectors equal to one process."""
    from click.testing import CliRunner

    from moai_export.commands.export_cli import main

    artifact = tmp_path / "merged"
    shutil.copytree(merged_dir, artifact)
    admitted = CliRunner().invoke(main, ["verify", f"engine:{artifact}", "--reference", f"torch:{merged_dir}",
                                         "--json", str(tmp_path / "verify.json")])
    assert admitted.exit_code == 0, admitted.output
    out = tmp_path / "vectors"
    report = run_embed(f"engine:{artifact}", [str(corpus)], out, _options())
    ids, vectors = _read(out)
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(40)) and report["shards_written"] == 8
    assert cosine_rows(vectors, _single_process(f"engine:{artifact}", TEXTS, ids)).min() >= 0.99999
    assert json.loads((out / OUTPUT_MANIFEST).read_text())["admitted_by"]["runtime"] == "engine"


def _embedding_actors() -> list:
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if "EmbedShards" in " ".join(p.info["cmdline"] or [])]


def test_a_worker_killed_mid_run_is_restarted_and_nothing_is_lost_or_doubled(local_ray, onnx_fp32_dir, tmp_path):
    """SIGKILL of one embedding actor once the first shard is written: Ray restarts it (one more
    actor start than workers) and retries its shard; every id is written exactly once, equal to
    a single-process encode."""
    spec = f"onnx:{onnx_fp32_dir}"
    corpus = _write_corpus(tmp_path / "long.jsonl", LONG_TEXTS)
    out = tmp_path / "vectors"
    killed: dict = {}

    def kill_one_actor():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            actors = _embedding_actors()
            if len(list(out.glob("part-*.parquet"))) >= 1 and actors:
                killed["pid"], killed["pending"] = actors[0].pid, 60 - len(list(out.glob("part-*.parquet")))
                os.kill(actors[0].pid, signal.SIGKILL)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    report = run_embed(spec, [str(corpus)], out, _options(shard_rows=10))
    killer.join(timeout=5)
    assert killed and killed["pending"] > 0  # the kill landed while shards were pending
    assert len(report["worker_starts"]) >= 3  # Ray started a worker again (each start: its own pid)
    ids, vectors = _read(out)
    assert len(ids) == 600 and sorted(ids) == sorted(f"doc-{i}" for i in range(600))  # each once
    assert cosine_rows(vectors, _single_process(spec, LONG_TEXTS, ids)).min() >= 0.99999


DRIVER = """
import sys
from moai_export.embed_job.job import EmbedOptions, run_embed
spec, corpus, out = sys.argv[1:]
run_embed(spec, [corpus], out, EmbedOptions(workers=2, cpus_per_worker=1, shard_rows=10, progress=False))
"""


def test_a_driver_killed_mid_run_leaves_only_complete_shards_and_a_rerun_completes(onnx_fp32_dir, tmp_path):
    """SIGKILL of the driver (its own local Ray) once some shards are written and others pending:
    what is left is only whole shards; a rerun embeds only the rest and completes with every id
    exactly once, equal to a single-process encode."""
    import psutil

    spec = f"onnx:{onnx_fp32_dir}"
    corpus = _write_corpus(tmp_path / "long.jsonl", LONG_TEXTS)
    out = tmp_path / "vectors"
    command = [sys.executable, "-c", DRIVER, spec, str(corpus), str(out)]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while not list(out.glob("part-*.parquet")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    started = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    written = len(list(out.glob("part-*.parquet")))
    assert 0 < written < 60 and not json.loads((out / OUTPUT_MANIFEST).read_text())["complete"]  # mid-run
    for pid in started:  # the killed driver's Ray processes (raylet, workers), by the ids it started
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    for shard in out.glob("part-*.parquet"):
        assert pq.ParquetFile(shard).metadata.num_rows > 0  # only whole shards carry the name

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    report = json.loads((out / "embed_report.json").read_text())
    assert report["shards_skipped"] >= written and report["rows_total"] == 600
    ids, vectors = _read(out)
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(600))
    assert cosine_rows(vectors, _single_process(spec, LONG_TEXTS, ids)).min() >= 0.99999


def test_a_node_that_sees_another_artifact_or_cannot_write_is_named(local_ray, onnx_fp32_dir, corpus, tmp_path):
    """The check a cluster job makes on every Ray node before staging (here the one local node):
    the same artifact bytes, the corpus files, a writable output."""
    import ray

    from moai_export.embed_job.nodes import check_nodes

    manifest = onnx_fp32_dir / "moai_manifest.json"
    right = hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert check_nodes(ray, manifest, right, [str(corpus)], tmp_path) == 1
    with pytest.raises(MoaiError, match="another artifact at"):
        check_nodes(ray, manifest, "0" * 64, [str(corpus)], tmp_path)
    with pytest.raises(MoaiError, match="1 corpus file.*missing.*cannot write into"):
        check_nodes(ray, manifest, right, [str(tmp_path / "gone.jsonl")], tmp_path / "no-such-dir")


def test_a_corpus_given_as_a_uri_is_read_through_pyarrow(local_ray, onnx_fp32_dir, corpus, tmp_path):
    """s3:// and gs:// go through the same code as file:// (pyarrow's filesystem of the scheme)."""
    from moai_export.embed_job.corpus import input_files

    uri = f"file://{corpus.parent}"
    assert input_files([uri]) == [f"file://{corpus}"]
    assert input_files([f"file://{corpus.parent}/*.jsonl"]) == [f"file://{corpus}"]
    with pytest.raises(MoaiError, match="no corpus file"):
        input_files([f"file://{corpus.parent}/*.parquet"])
    out = tmp_path / "vectors"
    report = run_embed(f"onnx:{onnx_fp32_dir}", [uri], out, _options())
    assert report["rows_total"] == 40 and sorted(_read(out)[0]) == sorted(f"doc-{i}" for i in range(40))
