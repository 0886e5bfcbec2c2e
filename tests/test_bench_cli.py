"""`moai-bench` end to end on real targets: the tiny example as torch and ONNX, on a BEIR
directory the test writes. Checks the files and their shape, never the timings."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from moai_export.benchmark.workloads import LengthSpec, generate_texts
from moai_export.commands.bench_cli import main
from moai_export.evaluation.beir import write_beir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def onnx_dir(onnx_fp32_dir):
    return onnx_fp32_dir


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    corpus = [{"_id": f"c{i}", "title": "t", "text": text} for i, text in enumerate([
        "BC카드 연회비는 1만 원이며 전월 실적 30만 원 이상이면 면제됩니다.",
        "해외 가맹점 결제 시 국제 브랜드 수수료 1%와 해외 서비스 수수료 0.2%가 부과됩니다.",
        "카드를 분실하면 즉시 고객센터나 모바일 앱에서 분실 신고를 하세요.",
        "무이자 할부는 2개월부터 6개월까지 가능합니다.",
        "Credit limits are reviewed every six months.",
        "현금서비스 이용 한도는 신용 한도의 40% 이내입니다. " * 20,  # a long document
    ])]
    queries = [{"_id": "q0", "text": "연회비 면제 조건", "domain": "card"},
               {"_id": "q1", "text": "해외 결제 수수료", "domain": "card"},
               {"_id": "q2", "text": "How often is the credit limit reviewed?", "domain": "en"}]
    qrels = [("q0", "c0", 1), ("q1", "c1", 1), ("q2", "c4", 1)]
    return write_beir(tmp_path_factory.mktemp("bench-data") / "tiny-ko", corpus, queries, qrels)


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def assert_png(path):
    import matplotlib.image
    from PIL import Image

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    with Image.open(path) as image:
        image.verify()
    pixels = matplotlib.image.imread(str(path))
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_throughput_run_writes_json_markdown_and_plots(merged_dir, onnx_dir, dataset, tmp_path):
    out = tmp_path / "tp"
    result = invoke("throughput", "--target", f"torch:{merged_dir}", "--target", f"onnx=onnx:{onnx_dir}",
                    "--workload", dataset, "--tokens", "24", "--texts", "6", "--batch-sizes", "2",
                    "--concurrency", "1,2", "--rate", "40", "--requests", "3", "--seconds", "10", "--quiet",
                    "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["command"] == "throughput" and data["machine"]["cpu_count"] >= 1 and not data["interrupted"]
    assert [t["label"] for t in data["targets"]] == [f"torch:{merged_dir}", "onnx"]
    assert all(t["tokens_counted_with"] == "own" for t in data["targets"])
    names = [w["name"] for w in data["workloads"]]
    assert names == ["tiny-ko/queries", "tiny-ko/documents", "generated-24/queries", "generated-24"]
    rows = data["results"]
    assert len(rows) == 4 * 1 * 3 * 2  # workloads x batch sizes x (2 concurrencies + 1 rate) x targets
    for row in rows:
        assert row["errors"] == 0 and row["requests"] == 3
        assert row["tokens"] > 0 and set(row["latency_ms"]) == {"p50", "p90", "p95", "p99", "max", "mean"}
        assert row["reference"] == f"torch:{merged_dir}"
        if row["target"] == row["reference"]:
            assert row["sentences_per_s_ratio"] == pytest.approx(1.0)
    assert {r["mode"] for r in rows} == {"closed", "open"}
    # real tokens: a document request's count is the sum of its texts' own lengths, no padding
    docs = [r for r in rows if r["workload"] == "tiny-ko/documents"]
    per_text = data["workloads"][1]["tokens_per_text"]["onnx"]
    assert per_text["max"] > 3 * per_text["min"]  # mixed lengths, so padding would show
    assert all(r["tokens"] < r["texts"] * per_text["max"] for r in docs)
    summary = (out / "summary.md").read_text()
    assert "## Sentences/s (ratio to" in summary and "| onnx |" in summary and "p99" in summary
    for name in ("throughput.png", "latency.png", "open_loop.png"):
        assert_png(out / name)


def test_retrieval_run_with_deltas_domains_and_plots(merged_dir, onnx_dir, dataset, tmp_path):
    out = tmp_path / "ret"
    result = invoke("retrieval", "--dataset", dataset, "--reference", f"ref=torch:{merged_dir}",
                    "--target", f"onnx=onnx:{onnx_dir}", "--batch-size", "4", "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    ref, onnx = data["results"]["targets"]
    assert ref["target"] == "ref" and "delta" not in ref
    assert set(ref["metrics"]) == {"ndcg@10", "mrr@10", "recall@1", "recall@10", "accuracy@1", "map@10"}
    assert set(ref["per_domain"]) == {"card", "en"} and ref["per_domain"]["card"]["queries"] == 2
    assert onnx["delta"]["ndcg@10"] == pytest.approx(0.0, abs=1e-9)  # fp32 ONNX ranks like torch
    parity = onnx["parity_vs_reference"]
    assert parity["min_cosine"] > 0.9999 and parity["rank_agreement_top10"] == 1.0
    assert "NDCG@10 per domain" in (out / "summary.md").read_text()
    assert_png(out / "retrieval.png")
    assert_png(out / "parity.png")


def test_retrieval_dimension_sweep(merged_dir, dataset, tmp_path):
    out = tmp_path / "dims"
    result = invoke("retrieval", "--dataset", dataset, "--target", f"torch:{merged_dir}", "--dimensions", "64,32,48",
                    "--batch-size", "4", "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    (row,) = json.loads((out / "results.json").read_text())["results"]["targets"]
    sweep = row["dimension_sweep"]
    assert [s["dims"] for s in sweep] == [32, 48, 64]
    assert sweep[-1]["ndcg@10"] == pytest.approx(row["metrics"]["ndcg@10"])  # full width = the plain run
    assert "per Matryoshka size" in (out / "summary.md").read_text()
    assert_png(out / "dimensions.png")
    result = invoke("retrieval", "--dataset", dataset, "--target", f"torch:{merged_dir}", "--dimensions", "16",
                    "--quiet", "--out", tmp_path / "bad")
    assert result.exit_code != 0 and "dimensions must be an integer from 32 to 64" in result.output


def test_parity_run_table_and_plot(merged_dir, onnx_dir, dataset, tmp_path):
    out = tmp_path / "par"
    result = invoke("parity", "--reference", f"torch:{merged_dir}", "--target", f"onnx=onnx:{onnx_dir}",
                    "--dataset", dataset, "--strict", "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    row = json.loads((out / "results.json").read_text())["results"]["targets"][0]
    assert row["candidate"] == "onnx" and row["passed"]
    assert row["min_cosine"] > 0.9999 and row["rank_agreement_top10"] == 1.0
    assert row["dataset"]["texts"] == 3 + 6
    assert "| onnx |" in (out / "summary.md").read_text()
    assert_png(out / "parity.png")


def test_interrupted_run_writes_what_it_has(merged_dir, tmp_path):
    """Ctrl-C after the first cells: the report is written, marked, and the exit code is 130."""
    from moai_export.benchmark.throughput import ThroughputSettings, run_throughput
    from moai_export.benchmark.workloads import Workload
    from moai_export.commands import bench_cli as cli

    rows: list[dict] = []

    def body(targets, data):
        data["workloads"] = [{"name": "w", "kind": "document", "texts": 2, "description": "two texts"}]
        run_throughput(targets, [Workload("w", "document", ["카드", "연회비"], "two texts")],
                       ThroughputSettings(batch_sizes=[1], concurrency=[1], requests=2, seconds=None), rows,
                       progress=False)
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        cli._run("throughput", tmp_path / "cut", [f"torch:{merged_dir}"], None, {"requests": 2, "seconds": None,
                 "warmup": 1, "arrival": "uniform", "max_inflight": 1}, True, body, rows)
    assert info.value.code == 130
    data = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert data["interrupted"] and len(data["results"]) == 1
    assert "Interrupted" in (tmp_path / "cut" / "summary.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["retrieval", "--dataset", "/nonexistent/ds", "--target", "torch:/x"], "no such dataset directory"),
    (["throughput", "--target", "bogus:thing", "--tokens", "8"], "bogus:thing"),
    (["throughput", "--target", "torch:/x", "--tokens", "abc"], "expected N or A-B"),
    (["throughput", "--target", "torch:/x", "--batch-sizes", "0"], ">= 1"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    result = CliRunner().invoke(main, args + ["--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output


def test_missing_qrels_is_named(dataset, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl"):
        (broken / name).write_bytes((dataset / name).read_bytes())
    result = CliRunner().invoke(main, ["retrieval", "--dataset", str(broken), "--target", "torch:/x"])
    assert result.exit_code == 1 and "no qrels.tsv" in result.output


def test_generated_lengths_are_what_they_say(merged_dir):
    from moai_export.model_files.contract_tokenizer import ContractTokenizer
    from moai_export.model_files.model_contract import read_contract

    tokenizer = ContractTokenizer.from_dir(merged_dir, read_contract(merged_dir))
    texts, measured = generate_texts(LengthSpec.parse("64"), 12, tokenizer, kind="document", seed=3)
    assert len(set(texts)) == 12
    assert all(abs(n - 64) <= 2 for n in measured), measured
    _, spread = generate_texts(LengthSpec.parse("16-128"), 40, tokenizer, kind="query", seed=3)
    assert min(spread) >= 14 and max(spread) <= 130 and max(spread) - min(spread) > 40


def test_benchmarks_judge_as_gates_do(example_dir, merged_dir, dataset, tmp_path):
    """retrieval and corpus judge every target against the reference by its gate-table cell, name
    the worst texts with their lengths, and exit 3 when asked: the base model (the adapter lost)
    fails where the merged model passes."""
    reference = f"peft:{example_dir / 'base'}+{example_dir / 'adapter'}"
    targets = ["--target", f"merged=torch:{merged_dir}", "--target", f"base=torch:{example_dir / 'base'}"]
    for command, extra in (("retrieval", []), ("corpus", ["--queries", "2"])):
        out = tmp_path / command
        result = invoke(command, "--dataset", dataset, "--reference", f"ref={reference}", *targets, *extra,
                        "--fail-below-gate", "--quiet", "--out", out)
        assert result.exit_code == 3, result.output
        rows = {r["target"]: r for r in json.loads((out / "results.json").read_text())["results"]["targets"]}
        judged = {name: (row.get("parity_vs_reference") or {}).get("judged") or row.get("judged")
                  for name, row in rows.items() if name != "ref"}
        assert judged["merged"]["passed"] and not judged["base"]["passed"], judged
        assert judged["base"]["gate"]["min_cosine"] == 0.99999  # the torch family's fp32 cell
        assert all(w["tokens"] > 0 for w in judged["base"]["worst"])
        summary = (out / "summary.md").read_text()
        assert "Worst texts against the reference" in summary and "tokens)" in summary
        assert "BELOW GATE: base" in result.output
    result = invoke("retrieval", "--dataset", dataset, "--reference", f"ref={reference}", targets[0], targets[1],
                    "--fail-below-gate", "--quiet", "--out", tmp_path / "ok")
    assert result.exit_code == 0, result.output
