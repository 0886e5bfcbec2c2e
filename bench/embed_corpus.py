"""`moai-export embed` (Ray Data) with 1 and 2 workers against one process embedding the same
corpus in one call (`moai-bench corpus`), same spec, one run.

    python bench/embed_corpus.py [--spec onnx:DIR] [--dataset ../shared/data/datasets/autorag-ko] \
        [--synthetic 20000] [--out DIR]

Corpora: the BEIR dataset's passages (autorag-ko: 720, ~571 tokens on average) and a synthetic
corpus of --synthetic Korean finance passages cut from the built-in text (token lengths uniform
on --synthetic-lengths). For each corpus, in this order: `moai-bench corpus` (one process, one
`encode` call, the Embedder's own token budget), then `moai-export embed` with 1 worker and with
2 workers (1 CPU each, a local Ray started for the job). Recorded per run: wall time of the
whole command (start-up, staging, verification and writing included), docs/s over the embedding
itself as each reports it, and the embed report's per-worker rates. Every embed output is
checked against the single process's vectors (cosine >= 0.99999 in fp32).

Without --spec it builds the `small` example (4 layers, hidden 256) and its fp32 ONNX export
under build/embed-corpus. Writes results.json and results.md to --out (default
bench/results/<date>-<machine>/embed-corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moai_export.benchmark.gateway_bench import build_onnx_artifact, log  # noqa: E402
from moai_export.benchmark.workloads import LengthSpec, generate_texts  # noqa: E402
from moai_export.evaluation.beir import load_beir  # noqa: E402
from moai_export.evaluation.machine import default_results_dir, machine_description  # noqa: E402
from moai_export.gates.parity import cosine_rows  # noqa: E402

BIN = Path(sys.executable).parent
MIN_COSINE = 0.99999


def synthetic_beir(directory: Path, count: int, lengths: str, spec: str) -> Path:
    """A BEIR directory of `count` generated passages (and a few queries, which `moai-bench corpus`
    times after the corpus)."""
    from moai_export.artifacts.kinds import load_embedder
    from moai_export.gates.probes import sizing_tokenizer

    if (directory / "corpus.jsonl").is_file():
        return directory
    with load_embedder(spec, admission="skip") as embedder:
        tokenizer = sizing_tokenizer(embedder)
    texts, _ = generate_texts(LengthSpec.parse(lengths), count, tokenizer, kind="document", seed=0)
    queries, _ = generate_texts(LengthSpec.parse("16-48"), 20, tokenizer, kind="query", seed=1)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"_id": f"s{i}", "title": "", "text": text}, ensure_ascii=False) + "\n")
    with (directory / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for i, text in enumerate(queries):
            handle.write(json.dumps({"_id": f"q{i}", "text": text}, ensure_ascii=False) + "\n")
    (directory / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                         + "".join(f"q{i}\ts{i}\t1\n" for i in range(len(queries))), encoding="utf-8")
    return directory


def single_process(spec: str, dataset: Path, work: Path) -> tuple[dict, float]:
    """`moai-bench corpus` of `spec` on `dataset`: (its target row, wall seconds); it saves the vectors."""
    out = work / "single"
    started = time.perf_counter()
    subprocess.run([str(BIN / "moai-bench"), "corpus", "--dataset", str(dataset), "--target", f"single={spec}",
                    "--queries", "20", "--out", str(out), "--quiet"], check=True)
    wall = time.perf_counter() - started
    return json.loads((out / "results.json").read_text(encoding="utf-8"))["results"]["targets"][0], wall


def embed_run(spec: str, dataset: Path, work: Path, workers: int) -> tuple[dict, float, Path]:
    out = work / f"embed-{workers}w"
    shutil.rmtree(out, ignore_errors=True)  # a fresh output: a complete one would be resumed, embedding nothing
    started = time.perf_counter()
    subprocess.run([str(BIN / "moai-export"), "embed", spec, str(dataset), "--out", str(out), "--workers",
                    str(workers), "--cpus-per-worker", "1", "--no-progress"], check=True)
    wall = time.perf_counter() - started
    return json.loads((out / "embed_report.json").read_text(encoding="utf-8")), wall, out


def check_against(spec: str, texts: dict[str, str], out: Path) -> float:
    """Min cosine of the embed output's vectors against one process's encode of the same texts."""
    import pyarrow.parquet as pq

    from moai_export.artifacts.kinds import load_embedder
    from moai_export.embed_job.shards import embedding_matrix

    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    ids = table.column("id").to_pylist()
    vectors = embedding_matrix(table)
    with load_embedder(spec, admission="skip") as embedder:
        expected = embedder.encode([texts[i] for i in ids], "document")
    return float(cosine_rows(vectors, expected).min())


def run_corpus(spec: str, name: str, dataset: Path, work: Path) -> dict:
    beir = load_beir(dataset)
    texts = dict(zip(beir.corpus_ids, beir.corpus_texts))
    work.mkdir(parents=True, exist_ok=True)
    log(f"{name}: {len(texts)} passages, one process (moai-bench corpus)")
    row, wall = single_process(spec, dataset, work)
    rows = [{"run": "one process (moai-bench corpus)", "wall_s": wall, "docs_per_s": row["docs_per_s"],
             "wall_docs_per_s": len(texts) / wall, "min_cosine": None}]
    for workers in (1, 2):
        log(f"{name}: moai-export embed, {workers} worker(s)")
        report, wall, out = embed_run(spec, dataset, work, workers)
        cosine = check_against(spec, texts, out)
        rows.append({"run": f"embed, {workers} worker(s)", "wall_s": wall, "docs_per_s": report["docs_per_s"],
                     "wall_docs_per_s": len(texts) / wall, "min_cosine": cosine, "timings": report["timings"],
                     "workers": report["workers"]})
    single = rows[0]["docs_per_s"]
    for r in rows:
        r["vs_one_process"] = r["docs_per_s"] / single if single else None
    return {"corpus": name, "passages": len(texts), "runs": rows}


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    lines = ["# `moai-export embed` on Ray Data vs one process", "",
             f"machine: {results['machine']['summary']}; spec: `{results['spec']}`; load average at start: "
             f"{', '.join(f'{x:.2f}' for x in results['load_average'])}", "",
             "One process: `moai-bench corpus`, one `encode` call, onnxruntime on both vCPUs. embed: a local Ray, "
             "workers of 1 CPU each (1 intra-op thread), shards of at least 4 per worker.",
             "", "docs/s: over the embedding alone, as each reports it; wall: the whole command (start-up, Ray, "
             "staging, probe gate, writing).", ""]
    for corpus in results["corpora"]:
        lines += [f"## {corpus['corpus']} ({corpus['passages']} passages)", "",
                  "| run | docs/s | vs one process | wall s | docs/s over wall | min cosine vs one process |",
                  "|---|---|---|---|---|---|"]
        for r in corpus["runs"]:
            cosine = "-" if r["min_cosine"] is None else f"{r['min_cosine']:.6f}"
            lines.append(f"| {r['run']} | {r['docs_per_s']:.1f} | {r['vs_one_process']:.2f} | {r['wall_s']:.1f} | "
                         f"{r['wall_docs_per_s']:.1f} | {cosine} |")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=None, help="an admitted local spec (default: build the small example's fp32 ONNX)")
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/data/datasets/autorag-ko")
    parser.add_argument("--synthetic", type=int, default=20000, help="generated passages (0: none)")
    parser.add_argument("--synthetic-lengths", default="32-256", help="their token lengths, A-B")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "embed-corpus")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    spec = args.spec or f"onnx:{build_onnx_artifact(args.work, log, size='small')}"
    results = {"machine": machine_description(), "spec": spec, "load_average": list(os.getloadavg()), "corpora": []}
    corpora = []
    if args.dataset.is_dir():
        corpora.append((args.dataset.name, args.dataset))
    if args.synthetic:
        corpora.append((f"synthetic-{args.synthetic}",
                        synthetic_beir(args.work / f"synthetic-{args.synthetic}", args.synthetic,
                                       args.synthetic_lengths, spec)))
    for name, dataset in corpora:
        results["corpora"].append(run_corpus(spec, name, dataset, args.work / name))
    out = args.out or default_results_dir("embed-corpus")
    write_report(results, out)
    log(f"results: {out}")
    failed = [r for c in results["corpora"] for r in c["runs"] if r["min_cosine"] is not None
              and r["min_cosine"] < MIN_COSINE]
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
