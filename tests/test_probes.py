"""The probe set the gates embed: built-in texts across the contract's length range, the user's
own texts (`--probes PATH`, sampled with a seed, stratified so long documents are kept), min
cosine per length bucket in every report and record, and `verify` drawing the recorded sample
again. The point of it all: an artifact right on short texts and wrong on long documents is
refused with the default gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from moai_export.artifacts.kinds import Kind, Option, kind_named, registered
from moai_export.benchmark.workloads import LengthSpec, generate_texts
from moai_export.commands.export_cli import main
from moai_export.core.errors import MoaiError
from moai_export.embedders.torch_model import TorchEmbedder
from moai_export.evaluation.beir import write_beir
from moai_export.gates.length_buckets import OVER_MAX, length_bucket
from moai_export.gates.parity import compare
from moai_export.gates.probe_files import ProbeOptions, draw_sample, read_probe_file, stratified_sample
from moai_export.gates.probes import long_documents, probe_set, short_probes
from moai_export.gates.table import gate_for
from moai_export.gates.verification import PROBES_FILE
from moai_export.model_files.contract_tokenizer import ContractTokenizer
from moai_export.model_files.model_contract import read_contract


@pytest.fixture(scope="module")
def tokenizer(merged_dir) -> ContractTokenizer:
    return ContractTokenizer.from_dir(merged_dir, read_contract(merged_dir))


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _long_documents(tokenizer, count=6, lengths="600-900") -> list[str]:
    return generate_texts(LengthSpec.parse(lengths), count, tokenizer, kind="document", seed=1)[0]


# --- the built-in probe set --------------------------------------------------------------------

def test_builtin_probes_span_every_length_bucket_and_keep_the_end_token(tokenizer):
    max_tokens = tokenizer.contract.max_tokens
    probes = probe_set(tokenizer)
    assert probes == probe_set(tokenizer)  # deterministic
    lengths = {p.id: tokenizer.count_tokens(p.text, p.kind) for p in probes}
    buckets = {length_bucket(n, max_tokens) for n in lengths.values()}
    assert buckets == {"<=32", "<=128", "<=256", "<=512", f"<={max_tokens}", OVER_MAX}
    near_max = lengths["d:finance-near-max-tokens"]
    assert max_tokens - 8 <= near_max <= max_tokens, near_max  # just below max_tokens
    for target in (124, 252, 508):
        assert abs(lengths[f"d:finance-{target}-tokens"] - target) <= 2
    long_texts = [p.text for p in long_documents(tokenizer)]
    assert len(set(t[:40] for t in long_texts)) == len(long_texts)  # no two open alike
    assert any("|" in t for t in long_texts) and any("%" in t for t in long_texts)  # tables and numbers
    assert any(any("a" <= c <= "z" for c in t) and any("가" <= c <= "힣" for c in t) for t in long_texts)
    # the over-max probes are cut to max_tokens with the end token still last
    over = [p for p in probes if p.id.endswith("over-max-tokens")]
    for probe in over:
        ids = tokenizer.encode([probe.text], probe.kind).ids[0]
        assert len(ids) == max_tokens and ids[-1] == tokenizer.contract.end_token_id
    assert len(probes) <= 32  # every gate of the suite embeds them: keep the set moderate


def test_a_short_contract_gets_no_document_past_its_max_tokens(merged_dir):
    contract = read_contract(merged_dir, max_tokens=200)
    short = ContractTokenizer.from_dir(merged_dir, contract)
    lengths = {p.id: short.count_tokens(p.text, p.kind) for p in long_documents(short)}
    assert set(lengths) == {"d:finance-124-tokens", "d:finance-near-max-tokens"}
    assert 192 <= lengths["d:finance-near-max-tokens"] <= 200


# --- --probes files ----------------------------------------------------------------------------

def test_probe_files_json_lines_and_beir(tmp_path):
    path = _jsonl(tmp_path / "mine.jsonl", [{"text": "카드 연회비", "kind": "query"}, "",
                                            {"text": "연회비는 1만 원입니다.", "kind": "document", "id": "fee"}])
    read = read_probe_file(path)
    assert [(p.id, p.kind) for p in read.probes] == [("mine.jsonl:1", "query"), ("mine.jsonl:fee", "document")]
    assert read.format == "jsonl" and len(read.files["mine.jsonl"]) == 64
    beir = write_beir(tmp_path / "beir", corpus=[{"_id": "d1", "text": "문서"}, {"_id": "d2", "text": ""}],
                      queries=[{"_id": "q1", "text": "질문"}], qrels=[("q1", "d1", 1)])
    read = read_probe_file(beir)
    assert [(p.id, p.kind) for p in read.probes] == [("queries.jsonl:q1", "query"), ("corpus.jsonl:d1", "document")]
    assert set(read.files) == {"corpus.jsonl", "queries.jsonl"}
    (beir / "qrels.tsv").unlink()
    assert len(read_probe_file(beir).probes) == 2  # a probe sample needs no qrels


@pytest.mark.parametrize("line, message", [
    ('{"text": "a", "kind": "query"', r"bad\.jsonl:2: not valid JSON"),
    ('{"text": "a"}', r"bad\.jsonl:2: \"kind\" must be one of query, document, not None"),
    ('{"text": "a", "kind": "passage"}', r"bad\.jsonl:2: \"kind\" must be one of query, document, not 'passage'"),
    ('{"kind": "document"}', r'bad\.jsonl:2: no "text"'),
    ('{"text": "", "kind": "document"}', r'bad\.jsonl:2: "text" is empty'),
    ('["a", "query"]', r"bad\.jsonl:2: expected an object"),
])
def test_a_bad_probe_line_is_an_error_naming_its_line(tmp_path, line, message):
    path = _jsonl(tmp_path / "bad.jsonl", [{"text": "fine", "kind": "query"}, line])
    with pytest.raises(MoaiError, match=message):
        read_probe_file(path)


def test_an_empty_probe_file_or_a_missing_path_is_an_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(MoaiError, match="empty.jsonl: no probe texts"):
        read_probe_file(tmp_path / "empty.jsonl")
    with pytest.raises(MoaiError, match="no such file or directory"):
        read_probe_file(tmp_path / "missing.jsonl")
    (tmp_path / "dir").mkdir()
    with pytest.raises(MoaiError, match="not a BEIR directory"):
        read_probe_file(tmp_path / "dir")


# --- sampling ----------------------------------------------------------------------------------

def test_stratified_sampling_is_seeded_and_keeps_the_rare_long_documents():
    keys = [("document", 32)] * 100 + [("document", 1024)] * 3 + [("query", 32)] * 50
    sample = stratified_sample(keys, 12, seed=0)
    assert sample == stratified_sample(keys, 12, seed=0) and sample == sorted(sample)
    assert sample != stratified_sample(keys, 12, seed=1)
    assert {100, 101, 102} <= set(sample)  # all three long documents, though 2% of the file
    assert len(sample) == 12 and len(stratified_sample(keys, 1000, seed=0)) == len(keys)


def test_draw_sample_describes_what_it_drew(tmp_path, tokenizer):
    long = _long_documents(tokenizer, count=3)
    rows = [{"text": f"짧은 문서 {i}번: 연회비 {i},000원", "kind": "document"} for i in range(40)]
    rows += [{"text": text, "kind": "document"} for text in long] + [{"text": "연회비?", "kind": "query"}]
    path = _jsonl(tmp_path / "corpus.jsonl", rows)
    sample = draw_sample(ProbeOptions(path, sample=8, seed=0), tokenizer)
    assert set(long) <= {p.text for p in sample.probes}
    assert sample.describe() == {"path": str(path.resolve()), "format": "jsonl", "files": read_probe_file(path).files,
                                 "available": {"query": 1, "document": 43}, "sample": 8, "seed": 0,
                                 "drawn": {"query": 1, "document": 7}}


# --- buckets -----------------------------------------------------------------------------------

def test_length_buckets_and_min_cosine_per_bucket():
    assert [length_bucket(n, 1024) for n in (1, 32, 33, 128, 200, 512, 513, 1024, 1025)] == [
        "<=32", "<=32", "<=128", "<=128", "<=256", "<=512", "<=1024", "<=1024", OVER_MAX]
    assert [length_bucket(n, 256) for n in (100, 256, 257)] == ["<=128", "<=256", OVER_MAX]
    probes = short_probes()[:3]
    reference = np.eye(3, 8, dtype=np.float32)
    candidate = reference.copy()
    candidate[2, 3] = 0.5  # the long one is off
    result = compare(reference, candidate, probes, gate_for("torch", "fp32").thresholds, candidate_name="c",
                     reference_name="r", buckets=["<=32", OVER_MAX, "<=512"])
    by_length = result.by_length()
    assert list(by_length) == ["<=32", "<=512", OVER_MAX]  # shortest first
    assert by_length["<=32"]["min_cosine"] == 1.0 and by_length["<=512"]["min_cosine"] < 0.9
    assert by_length["<=512"]["probes"] == 1


# --- an artifact right on short texts, wrong on long documents ---------------------------------

WINDOW = 192  # tokens the sliding-window candidate attends to


class SlidingWindowEmbedder(TorchEmbedder):
    """The merged model, but its attention sees only the last WINDOW tokens of a text: what a
    runtime with a shorter attention window or a cut position table serves. Below WINDOW tokens it
    is the merged model exactly, so short probes cannot tell."""

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.copy()
        for row in mask:
            row[np.flatnonzero(row)[:-WINDOW]] = 0
        return super().forward(input_ids, mask)


def windowed_from_spec(location: str, *, name: str, device: str = "cpu", dims: int | None = None,
                       admission: str = "require"):
    embedder = SlidingWindowEmbedder.from_dir(Path(location), device=device, name=name, dims=dims, admission="skip")
    embedder.serving = kind_named("windowed").serving_config(device, "fp32")
    return embedder


WINDOWED = Kind("windowed", "DIR: a merged directory served with a sliding attention window",
                f"{__name__}:windowed_from_spec", "torch", options=(Option("device"),), runtime="windowed-runtime",
                files=("config.json",))


def test_an_artifact_wrong_only_on_long_documents_is_refused_by_the_default_gate(example_dir, merged_dir, tmp_path,
                                                                                tokenizer):
    reference = f"peft:{example_dir / 'base'}+{example_dir / 'adapter'}"
    artifact = tmp_path / "merged"
    shutil.copytree(merged_dir, artifact)
    probes = _jsonl(tmp_path / "long.jsonl", [{"text": t, "kind": "document"} for t in _long_documents(tokenizer)])
    gate = gate_for("torch", "fp32")
    short = short_probes()
    with registered(WINDOWED):
        from moai_export.artifacts.kinds import load_embedder
        from moai_export.gates.parity import embed_probes

        # the candidate passes the default gate on the short probes ...
        with load_embedder(reference) as ref, load_embedder(f"windowed:{artifact}", admission="skip") as candidate:
            on_short = compare(embed_probes(ref, short), embed_probes(candidate, short), short, gate.thresholds,
                               candidate_name="windowed", reference_name="peft")
        assert on_short.passed, on_short.reasons()
        # ... and is refused on the user's long documents, through verify's admission path
        result = CliRunner().invoke(main, ["verify", f"windowed:{artifact}", "--reference", reference,
                                           "--probes", str(probes), "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 3, result.output
    report = json.loads((tmp_path / "v.json").read_text())
    [run] = report["gates"]
    assert not run["passed"] and run["gate"]["min_cosine"] == 0.99999  # the default gate
    assert any(f.startswith("long.jsonl:") for f in run["failures"])  # the user's documents are named
    by_length = run["by_length"]
    assert by_length["<=32"]["min_cosine"] >= 0.99999 and by_length["<=1024"]["min_cosine"] < 0.99999
    assert run["rank_agreement_top10"] is None and run["rank_agreement_on"].startswith("not applicable")
    assert "min cos by length" in result.output and "n/a" in result.output
    manifest = json.loads((artifact / "moai_manifest.json").read_text())
    assert "windowed-runtime" not in {e["runtime"] for e in manifest["admitted_for"]}  # nothing admitted


# --- the record, and verify re-drawing it ------------------------------------------------------

def test_merge_records_the_probe_sample_and_verify_draws_it_again(example_dir, tmp_path, tokenizer):
    rows = [{"text": q, "kind": "query"} for q in ("연회비 면제 조건", "해외 결제 수수료", "할부 수수료율")]
    rows += [{"text": t, "kind": "document"} for t in _long_documents(tokenizer, count=4, lengths="100-700")]
    probes = _jsonl(tmp_path / "mine.jsonl", rows)
    out = tmp_path / "merged"
    base, adapter = example_dir / "base", example_dir / "adapter"
    result = CliRunner().invoke(main, ["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(out),
                                       "--probes", str(probes), "--probe-sample", "5", "--probe-seed", "3"])
    assert result.exit_code == 0, result.output
    assert "min cos by length" in result.output and "top-10 agreement: the probe sample" in result.output
    record = json.loads((out / "moai_parity.json").read_text())
    recorded = record["probe_set"]
    assert recorded["source"] == f"built-in + {probes.resolve()}"
    sample = recorded["sample"]
    assert (sample["sample"], sample["seed"], sample["format"]) == (5, 3, "jsonl")
    assert sample["files"] == read_probe_file(probes).files and sum(sample["drawn"].values()) == 5
    assert recorded["count"] == len(probe_set(tokenizer)) + 5
    assert sum(recorded["length_buckets"].values()) == recorded["count"]
    assert set(recorded["token_lengths"]) == {"min", "p50", "p90", "max"}
    for gate in record["gates"]:
        assert gate["by_length"] and gate["rank_agreement_on"].startswith("the probe sample")
    side = json.loads((out / PROBES_FILE).read_text())["probes"]
    assert sum(p["id"].startswith("mine.jsonl:") for p in side) == 5 and all(p["bucket"] for p in side)

    reference = f"peft:{base}+{adapter}"
    result = CliRunner().invoke(main, ["verify", str(out), "--reference", reference, "--no-admit",
                                       "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 0, result.output
    assert f"the sample of {probes.resolve()} recorded in {out}" in result.output
    assert json.loads((tmp_path / "v.json").read_text())["probe_set"]["sha256"] == recorded["sha256"]

    probes.unlink()
    result = CliRunner().invoke(main, ["verify", str(out), "--reference", reference, "--no-admit",
                                       "--json", str(tmp_path / "v2.json")])
    assert result.exit_code == 0, result.output
    assert "which is gone: gating on the built-in probe set alone" in result.output
    assert json.loads((tmp_path / "v2.json").read_text())["probe_set"]["sample"] is None
