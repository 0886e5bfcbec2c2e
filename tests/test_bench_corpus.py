"""`moai-bench corpus`: a whole corpus in one call per target, side by side."""

from __future__ import annotations

import json

from click.testing import CliRunner

from moai_export.benchmark.corpus import flops_per_token, model_config_for
from moai_export.commands.bench_cli import main
from moai_export.evaluation.beir import write_beir


def test_corpus_run_side_by_side(merged_dir, tmp_path):
    corpus = [{"_id": f"c{i}", "text": "카드 연회비 안내 " * (1 + 5 * (i % 7))} for i in range(40)]
    queries = [{"_id": "q0", "text": "연회비 면제 조건"}]
    data = write_beir(tmp_path / "ds", corpus, queries, [("q0", "c0", 1)])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["corpus", "--dataset", str(data), "--target", f"torch=torch:{merged_dir}",
                                       "--target", f"engine=engine:{merged_dir}?max_batch_tokens=512",
                                       "--queries", "5", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["results"]["targets"]
    assert [r["target"] for r in rows] == ["torch", "engine"]
    for row in rows:
        assert row["documents"] == 40 and row["docs_per_s"] > 0 and row["real_tokens_per_s"] > 0
        assert row["query_p99_ms"] >= row["query_p50_ms"] > 0
        assert row["mfu"] is None and row["peak_gpu_gib"] is None  # no GPU here: not invented
        assert row["gflop_per_token"] > 0  # the model config was found through the spec
    assert rows[0]["real_tokens"] == rows[1]["real_tokens"]  # the same tokens, counted the same way
    assert "| engine | fp32 |" in (out / "summary.md").read_text()


def test_flops_per_token_of_the_full_model():
    config = {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
              "head_dim": 128, "intermediate_size": 3072}
    # ~0.44 B non-embedding weights -> ~0.88 GFLOP, plus attention at 512 tokens
    assert 0.9e9 < flops_per_token(config, 512) < 1.0e9
    assert model_config_for("engine:/nowhere?device=cuda") is None
