"""`moai-export embed` on a local Ray with 2 workers of 1 CPU: every id exactly once, vectors equal to
a single-process encode, a rerun resumes, and the refusals (duplicate ids, another artifact's output,
an unadmitted artifact, a failing probe gate) write nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from moai_export.artifacts.kinds import load_embedder  # noqa: E402
from moai_export.core.errors import MoaiError, VerificationFailed  # noqa: E402
from moai_export.embed_job.job import OUTPUT_MANIFEST, EmbedOptions, run_embed  # noqa: E402
from moai_export.gates.parity import cosine_rows  # noqa: E402

TEXTS = [f"문서 {i}: BC카드 연회비와 할부 수수료 안내 " + "추가 설명 " * (i % 7) for i in range(40)]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": f"doc-{i}", "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(TEXTS)), encoding="utf-8")
    return path


def _options(merged_dir, **extra):
    return EmbedOptions(reference=f"torch:{merged_dir}", workers=2, cpus_per_worker=1, shard_rows=10, batch_rows=8,
                        log=lambda m: None, **extra)


def _read(out):
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    return table.column("id").to_pylist(), np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(
        table.num_rows, -1)


def test_two_workers_write_every_id_once_equal_to_a_single_process_and_a_rerun_resumes(
        local_ray, onnx_fp32_dir, merged_dir, corpus, tmp_path):
    out = tmp_path / "vectors"
    spec = f"onnx:{onnx_fp32_dir}"
    report = run_embed(spec, [str(corpus)], out, _options(merged_dir))
    ids, vectors = _read(out)
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(40)) and len(set(ids)) == 40
    assert report["rows_embedded"] == 40 and report["shards_written"] == 4 and len(report["workers"]) >= 1
    with load_embedder(spec) as single:
        expected = single.encode(TEXTS, "document")
    order = [int(i.split("-")[1]) for i in ids]
    assert cosine_rows(vectors, expected[order]).min() >= 0.99999
    manifest = json.loads((out / OUTPUT_MANIFEST).read_text())
    assert manifest["complete"] and manifest["rows"] == 40 and manifest["admitted_by"]["runtime"] == "onnxruntime"

    shards = sorted(out.glob("part-*.parquet"))
    kept = {p.name: p.read_bytes() for p in shards[:1] + shards[2:]}
    shards[1].unlink()
    rerun = run_embed(spec, [str(corpus)], out, _options(merged_dir))
    assert rerun["shards_written"] == 1 and rerun["shards_skipped"] == 3 and rerun["rows_embedded"] < 40
    assert {name: (out / name).read_bytes() for name in kept} == kept  # complete shards untouched
    # the same ids, vectors equal to the uninterrupted run (another batch mix pads differently)
    ids_again, vectors_again = _read(out)
    assert ids_again == ids and cosine_rows(vectors_again, vectors).min() >= 0.99999

    with pytest.raises(MoaiError, match="another artifact"):  # vectors of two models never mix
        run_embed(f"torch:{merged_dir}", [str(corpus)], out, _options(merged_dir))


def test_the_command_writes_matryoshka_float16_vectors(local_ray, onnx_fp32_dir, merged_dir, corpus, tmp_path):
    from click.testing import CliRunner

    from moai_export.commands.export_cli import main

    out = tmp_path / "vectors"
    result = CliRunner().invoke(main, ["embed", f"onnx:{onnx_fp32_dir}", str(corpus), "--out", str(out),
                                       "--reference", f"torch:{merged_dir}", "--workers", "2", "--dims", "32",
                                       "--float16", "--shard-rows", "20"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: halffloat>[32]"
    assert table.column("tokens").to_numpy().min() > 1
    ids, vectors = _read(out)
    with load_embedder(f"onnx:{onnx_fp32_dir}", dims=32) as single:
        expected = single.encode(TEXTS, "document")
    assert np.allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=1e-2)
    assert cosine_rows(vectors, expected[[int(i.split("-")[1]) for i in ids]]).min() >= 0.999
    assert json.loads((out / "embed_report.json").read_text())["rows_embedded"] == 40


def test_duplicate_ids_are_named_and_nothing_is_written(local_ray, onnx_fp32_dir, merged_dir, corpus, tmp_path):
    with corpus.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"_id": "doc-7", "text": "again"}) + "\n")
    out = tmp_path / "vectors"
    with pytest.raises(MoaiError, match="duplicate ids.*doc-7"):
        run_embed(f"onnx:{onnx_fp32_dir}", [str(corpus)], out, _options(merged_dir))
    assert not list(out.glob("part-*"))


def test_an_unadmitted_artifact_is_refused(onnx_fp32_dir, merged_dir, corpus, tmp_path):
    copy = tmp_path / "onnx"
    shutil.copytree(onnx_fp32_dir, copy)
    manifest = json.loads((copy / "moai_manifest.json").read_text())
    manifest["admitted_for"] = []
    (copy / "moai_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MoaiError, match="not verified for onnxruntime"):
        run_embed(f"onnx:{copy}", [str(corpus)], tmp_path / "vectors", _options(merged_dir))
    assert not (tmp_path / "vectors").exists()


def test_a_worker_refuses_an_unadmitted_configuration_where_it_runs(local_ray, onnx_fp32_dir, merged_dir, corpus,
                                                                   tmp_path, monkeypatch):
    """The driver's check passed (here: skipped), but the configuration a worker loads was never
    admitted: the worker refuses, loudly, and no shard is written."""
    from moai_export.embed_job import job

    copy = tmp_path / "onnx"
    shutil.copytree(onnx_fp32_dir, copy)
    manifest = json.loads((copy / "moai_manifest.json").read_text())
    manifest["admitted_for"] = []
    (copy / "moai_manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(job, "_gate", lambda *args: ({}, None, {}))
    with pytest.raises(MoaiError, match="a worker refused.*not verified for onnxruntime"):
        run_embed(f"onnx:{copy}", [str(corpus)], tmp_path / "vectors", _options(merged_dir))
    assert not list((tmp_path / "vectors").glob("part-*"))


def test_a_failing_probe_gate_refuses_before_writing(onnx_fp32_dir, example_dir, corpus, tmp_path):
    # the base model without the adapter as the reference: the artifact cannot match it
    options = _options(example_dir / "base")
    options.reference = f"torch:{example_dir / 'base'}"
    with pytest.raises(VerificationFailed, match="fails its gate"):
        run_embed(f"onnx:{onnx_fp32_dir}", [str(corpus)], tmp_path / "vectors", options)
    assert not (tmp_path / "vectors").exists()


DRIVER = """
import sys
from moai_export.embed_job.job import EmbedOptions, run_embed
spec, corpus, out, reference = sys.argv[1:]
run_embed(spec, [corpus], out, EmbedOptions(reference=reference, workers=2, cpus_per_worker=1, shard_rows=5,
                                             batch_rows=4))
"""


def test_a_driver_killed_mid_run_leaves_only_complete_shards_and_a_rerun_completes(
        onnx_fp32_dir, merged_dir, corpus, tmp_path):
    """SIGKILL of the driver (its own local Ray) once the plan is written, while shards are pending:
    what is left is only whole shards; a rerun completes with every id exactly once, equal to a
    single-process encode."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    out = tmp_path / "vectors"
    command = [sys.executable, "-c", DRIVER, f"onnx:{onnx_fp32_dir}", str(corpus), str(out), f"torch:{merged_dir}"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while not (out / OUTPUT_MANIFEST).is_file() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    started = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not json.loads((out / OUTPUT_MANIFEST).read_text())["complete"]  # it landed mid-run
    for pid in started:  # the killed driver's Ray processes (raylet, workers), by the ids it started
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    for shard in out.glob("part-*.parquet"):
        assert pq.ParquetFile(shard).metadata.num_rows > 0  # only whole shards carry the name

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ids, vectors = _read(out)
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(40))
    with load_embedder(f"onnx:{onnx_fp32_dir}") as single:
        expected = single.encode(TEXTS, "document")
    assert cosine_rows(vectors, expected[[int(i.split("-")[1]) for i in ids]]).min() >= 0.99999
