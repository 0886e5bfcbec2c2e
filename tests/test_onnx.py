"""`moai-export onnx`: graphs with pooling inside, gated against the PEFT reference."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from moai_export.commands.export_cli import main
from moai_export.core.errors import MoaiError, VerificationFailed
from moai_export.embedders.onnx_runtime import OnnxEmbedder
from moai_export.embedders.peft_reference import PeftEmbedder
from moai_export.embedders.torch_model import TorchEmbedder
from moai_export.export import onnx as onnx_export
from moai_export.export.int8 import DEFAULT_INT8_METHOD, INT8_METHODS
from moai_export.export.onnx import OnnxOptions, export_onnx
from moai_export.gates.parity import cosine_rows
from moai_export.gates.probe_files import ProbeOptions
from moai_export.gates.table import GateOverrides, gate_for

TEXTS = ["BC카드 연회비는 어떻게 되나요?", "a", "해외 결제 수수료 " * 30, "Credit limit review every six months."]


def quiet(**kwargs) -> OnnxOptions:
    return OnnxOptions(log=lambda message: None, **kwargs)


@pytest.fixture(scope="module")
def reference(example_dir):
    return PeftEmbedder.from_base_and_adapter(example_dir / "base", example_dir / "adapter", name="peft")


@pytest.fixture(scope="module")
def onnx_dirs(merged_dir, reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    reports = {}
    for precision in ("fp32", "fp16", "int8"):
        reports[precision] = export_onnx(merged_dir, root / precision, reference=reference,
                                         options=quiet(precision=precision))
    return root, reports


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_precision_passes_its_gate(onnx_dirs, precision):
    root, reports = onnx_dirs
    report = reports[precision]
    assert report["passed"] and report["gate"]["truncated_probes"] >= 1
    expected = gate_for("onnx", precision)
    assert report["gate"]["thresholds"]["min_cosine"] == expected.min_cosine
    assert report["gate"]["min_cosine"] >= expected.min_cosine
    names = {p.name for p in (root / precision).iterdir()}
    assert {"model.onnx", "tokenizer.json", "moai_contract.json", "moai_manifest.json", "moai_parity.json"} <= names
    manifest = json.loads((root / precision / "moai_manifest.json").read_text())
    assert manifest["options"]["precision"] == precision and manifest["options"]["opset"] == 18
    assert len(manifest["files"]["model.onnx"]["sha256"]) == 64 and "tokenizer.json" in manifest["files"]
    assert manifest["inputs"]["source"]["weights"]["model.safetensors"]
    [admitted] = manifest["admitted_for"]
    assert (admitted["runtime"], admitted["device"], admitted["dtype"], admitted["provider"]) == (
        "onnxruntime", "cpu", precision, "cpu")
    assert admitted["gate"]["min_cosine"] >= expected.min_cosine and admitted["versions"]["onnxruntime"]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_graph_signature_is_the_same_across_precisions(onnx_dirs, precision):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_dirs[0] / precision / "model.onnx"))
    assert [(i.name, i.type, len(i.shape)) for i in session.get_inputs()] == [
        ("input_ids", "tensor(int64)", 2), ("attention_mask", "tensor(int64)", 2)]
    [output] = session.get_outputs()
    assert (output.name, output.type, output.shape[1]) == ("sentence_embedding", "tensor(float)", 64)


def test_plain_onnxruntime_consumer_needs_no_pooling_code(onnx_dirs, reference):
    """What a user without this toolkit does: tokenizer.json + onnxruntime, nothing else."""
    import onnxruntime as ort
    import tokenizers

    directory = onnx_dirs[0] / "fp32"
    tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_padding(direction="left", pad_id=151643, pad_token="<|endoftext|>")
    encodings = tokenizer.encode_batch(TEXTS)
    feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}
    vectors = ort.InferenceSession(str(directory / "model.onnx")).run(None, feeds)[0]
    assert cosine_rows(vectors, reference.encode(TEXTS, "document")).min() >= 0.99999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_last_token_pooling_in_graph_handles_right_padding(onnx_dirs):
    import onnxruntime as ort

    embedder = OnnxEmbedder(onnx_dirs[0] / "fp32")
    batch = embedder.tokenizer.tokenize(TEXTS, "document")  # left padded
    session = ort.InferenceSession(str(onnx_dirs[0] / "fp32" / "model.onnx"))
    left = session.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})[0]
    # move every row's padding to the right
    ids, mask = batch.input_ids.copy(), batch.attention_mask.copy()
    for row in range(len(ids)):
        n = int(mask[row].sum())
        ids[row] = np.concatenate([batch.input_ids[row, -n:], batch.input_ids[row, :-n]]) if n < ids.shape[1] else ids[row]
        mask[row] = np.concatenate([np.ones(n), np.zeros(ids.shape[1] - n)])
    right = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    assert cosine_rows(left, right).min() >= 0.99999


def test_batch_invariance_and_dynamic_axes(onnx_dirs):
    embedder = OnnxEmbedder(onnx_dirs[0] / "fp32")
    batched = embedder.encode(TEXTS, "query", batch_size=len(TEXTS))
    alone = np.concatenate([embedder.encode([t], "query") for t in TEXTS])
    assert cosine_rows(batched, alone).min() >= 0.99999


def test_merged_only_default_reference(merged_dir, tmp_path):
    """Without --reference the chain's root is the reference: the PEFT reference the merge was
    gated against (never the merged model alone, which a damaged merge would match)."""
    report = export_onnx(merged_dir, tmp_path / "onnx", options=quiet())
    assert report["passed"] and report["reference"].startswith("peft:")


def test_large_model_uses_one_external_data_file(merged_dir, reference, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_ABOVE", 0)  # treat the tiny model as > 2 GB
    report = export_onnx(merged_dir, tmp_path / "big", reference=reference, options=quiet())
    assert report["passed"]
    graph_files = sorted(p.name for p in (tmp_path / "big").iterdir() if "onnx" in p.name)
    assert graph_files == ["model.onnx", "model.onnx_data"]
    assert (tmp_path / "big" / "model.onnx").stat().st_size < 5_000_000


def test_wrong_pooling_in_graph_fails_and_writes_nothing(merged_dir, reference, tmp_path, monkeypatch):
    """Break it: trace a graph that mean-pools instead of last-token pooling (only the traced
    module is changed; the reference keeps the contract's pooling)."""

    class MeanPoolingEncoder(onnx_export.ContractEncoder):
        def __init__(self, backbone, contract):
            super().__init__(backbone, contract)
            self.pooler.mode = "mean"

    monkeypatch.setattr(onnx_export, "ContractEncoder", MeanPoolingEncoder)
    with pytest.raises(VerificationFailed, match="cosine"):
        export_onnx(merged_dir, tmp_path / "bad", reference=reference, options=quiet())
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))


def test_int8_with_a_strict_gate_fails(merged_dir, reference, tmp_path):
    """The int8 graph is measurably different: the fp32 gate must catch it, name the worst
    probes first, and (the default being the most accurate int8) point away from int8."""
    fp32 = gate_for("onnx", "fp32")
    options = quiet(precision="int8", overrides=GateOverrides(fp32.min_cosine, fp32.max_abs, fp32.min_rank_agreement))
    with pytest.raises(VerificationFailed) as failure:
        export_onnx(merged_dir, tmp_path / "int8", reference=reference, options=options)
    report = failure.value.report
    assert report["gate"]["failures"] and "--precision fp16" in str(failure.value)
    cosines = [float(m) for m in re.findall(r"cosine (\d\.\d+) <", " ".join(report["gate"]["failures"]))]
    assert len(cosines) > 1 and cosines == sorted(cosines)
    assert not (tmp_path / "int8").exists()


@pytest.mark.parametrize("int8_method", list(INT8_METHODS))
def test_every_int8_method_exports_and_passes_on_the_example(merged_dir, reference, tmp_path, int8_method):
    report = export_onnx(merged_dir, tmp_path / int8_method, reference=reference,
                         options=quiet(precision="int8", int8_method=int8_method))
    assert report["passed"] and report["gate"]["min_cosine"] >= gate_for("onnx", "int8").min_cosine
    manifest = json.loads((tmp_path / int8_method / "moai_manifest.json").read_text())
    assert manifest["options"]["int8_method"] == int8_method
    ops = {node.op_type for node in onnx.load(str(tmp_path / int8_method / "model.onnx")).graph.node}
    assert ("MatMulNBits" in ops) == (int8_method == "weight-only") and ("MatMulInteger" in ops) == (int8_method == "dynamic")


def test_int8_default_is_the_method_that_holds_on_long_documents():
    assert OnnxOptions().int8_method == DEFAULT_INT8_METHOD == "weight-only"


@pytest.mark.parametrize("precision, int8_method", [("fp32", "dynamic"), ("fp16", "dynamic"), ("int8", "weight-only")])
def test_real_bert_mean_pooling_exports(minilm, tmp_path, precision, int8_method):
    """Real weights (realistic activations), mean pooling, right padding."""
    # a hub model has no manifest: exported unverified, gated against itself in torch
    report = export_onnx(minilm, tmp_path / "minilm", options=quiet(precision=precision, int8_method=int8_method,
                                                                    allow_unverified=True))
    assert report["passed"], report["failures"]
    embedder = OnnxEmbedder(tmp_path / "minilm", admission="skip")
    ours = embedder.encode(TEXTS, "document")
    torch_vectors = TorchEmbedder.from_dir(minilm).encode(TEXTS, "document")
    assert cosine_rows(ours, torch_vectors).min() >= gate_for("onnx", precision).min_cosine
    batched = embedder.encode(TEXTS, "document", batch_size=len(TEXTS))
    alone = np.concatenate([embedder.encode([t], "document") for t in TEXTS])
    assert cosine_rows(batched, alone).min() >= 0.9999


def test_dynamic_int8_on_real_bert_is_refused_with_a_hint(minilm, tmp_path):
    """MiniLM's outlier activations cost dynamic int8 ~2.5% cosine: the gate must refuse it,
    name the failing probes and point at the method that passes."""
    with pytest.raises(VerificationFailed) as failure:
        export_onnx(minilm, tmp_path / "int8", options=quiet(precision="int8", int8_method="dynamic",
                                                               allow_unverified=True))
    assert "--int8-method weight-only" in str(failure.value) and "cosine" in str(failure.value)
    assert not (tmp_path / "int8").exists()


def test_damaged_graph_fails_verification(example_dir, onnx_dirs, tmp_path):
    """Break it: perturb one weight initializer of a published graph; verify must fail."""
    import shutil

    import onnx
    from onnx import numpy_helper

    damaged = tmp_path / "damaged"
    shutil.copytree(onnx_dirs[0] / "fp32", damaged)
    model = onnx.load(str(damaged / "model.onnx"))
    target = next(t for t in model.graph.initializer if len(t.dims) == 2 and t.dims[0] == t.dims[1] == 64)
    weights = numpy_helper.to_array(target).copy()
    weights += np.random.default_rng(0).normal(0, 0.05, weights.shape).astype(weights.dtype)
    target.CopyFrom(numpy_helper.from_array(weights, target.name))
    onnx.save_model(model, str(damaged / "model.onnx"))
    result = CliRunner().invoke(main, ["verify", str(damaged), "--reference",
                                       f"{example_dir / 'base'}+{example_dir / 'adapter'}",
                                       "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 3, result.output
    assert "FAIL" in result.output


def test_fp16_overflow_is_safe_or_refused(merged_dir, tmp_path):
    """A model with an injected large-activation channel (hundreds, like real LLM outlier
    channels): the fp16 graph gives finite embeddings that pass, or the export refuses."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "outlier"
    shutil.copytree(merged_dir, model_dir)
    (model_dir / "moai_manifest.json").unlink()  # a hand-made model now, not the verified merge
    weights = load_file(str(model_dir / "model.safetensors"))
    weights["embed_tokens.weight"][:, 7] = 600.0  # a residual channel in the hundreds for every token
    weights["layers.0.mlp.down_proj.weight"][7, :] *= 50.0
    weights["norm.weight"][7] = 0.0  # like real models: the outlier lives in the residual stream only
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    probe = TorchEmbedder.from_dir(model_dir)
    backbone = probe.encoder.backbone
    with torch.no_grad():
        batch = probe.tokenizer.tokenize(TEXTS, "document")
        hidden = backbone(input_ids=torch.from_numpy(batch.input_ids),
                          attention_mask=torch.from_numpy(batch.attention_mask), output_hidden_states=True)
    assert hidden.hidden_states[1].abs().max() > 300  # the outlier is really there
    try:
        report = export_onnx(model_dir, tmp_path / "fp16", options=quiet(precision="fp16", allow_unverified=True))
    except VerificationFailed as failure:
        assert any(reason in str(failure) for reason in ("NaN/inf", "cosine", "rank agreement"))
        assert not (tmp_path / "fp16").exists()
    else:
        assert report["passed"] and report["gate"]["min_cosine"] >= 0.999
        vectors = OnnxEmbedder(tmp_path / "fp16", admission="skip").encode(TEXTS, "query")
        assert np.isfinite(vectors).all()


def test_gpu_provider_without_onnxruntime_gpu_is_clear(onnx_dirs):
    from moai_export.embedders import load_embedder

    with pytest.raises(MoaiError, match="not verified for onnxruntime on cuda"):
        load_embedder(f"onnx:{onnx_dirs[0] / 'fp32'}?provider=cuda")  # admitted for the CPU provider only
    with pytest.raises(MoaiError, match="onnxruntime-gpu"):
        OnnxEmbedder(onnx_dirs[0] / "fp32", provider="cuda", admission="warn")


def _without_end_token_post_processor(merged_dir, tmp_path):
    """A merged directory as an older hub snapshot or a hand-made merge leaves it: tokenizer.json
    with "post_processor": null and no manifest."""
    import shutil

    source = tmp_path / "handmade"
    shutil.copytree(merged_dir, source)
    (source / "moai_manifest.json").unlink()
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    tokenizer["post_processor"] = None
    (source / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    return source


def test_onnx_ships_a_tokenizer_that_appends_the_end_token(merged_dir, tmp_path):
    """Defect 1: the exporter copied tokenizer.json verbatim; a consumer using plain `tokenizers`
    then pooled the wrong token while the gate, repairing in memory, said PASS."""
    import tokenizers

    source = _without_end_token_post_processor(merged_dir, tmp_path)
    plain = tokenizers.Tokenizer.from_file(str(source / "tokenizer.json"))
    assert plain.encode("BC카드 연회비는 어떻게 되나요?").ids[-1] != 151643  # the damaged source
    export_onnx(source, tmp_path / "o", options=quiet(allow_unverified=True))
    shipped = tokenizers.Tokenizer.from_file(str(tmp_path / "o" / "tokenizer.json"))
    assert shipped.encode("BC카드 연회비는 어떻게 되나요?").ids[-1] == 151643


def test_shipping_the_unrepaired_tokenizer_fails_the_gate(merged_dir, tmp_path, monkeypatch):
    """Break it: bring the old verbatim copy back; the gate must refuse and write nothing."""
    import shutil

    source = _without_end_token_post_processor(merged_dir, tmp_path)
    monkeypatch.setattr(onnx_export, "write_tokenizer_files",
                        lambda src, contract, out, **kw: shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json"))
    with pytest.raises(VerificationFailed, match="does not append '<\\|endoftext\\|>'"):
        export_onnx(source, tmp_path / "o", options=quiet(allow_unverified=True))
    assert not (tmp_path / "o").exists()


def test_onnx_cli_and_verify_cli(example_dir, merged_dir, onnx_dirs, tmp_path):
    reference = f"{example_dir / 'base'}+{example_dir / 'adapter'}"
    result = CliRunner().invoke(main, ["onnx", str(merged_dir), "--out", str(tmp_path / "o"), "--precision", "fp32",
                                       "--reference", reference])
    assert result.exit_code == 0, result.output
    assert "onnx fp32" in result.output and "PASS" in result.output
    json_path = tmp_path / "verify.json"
    result = CliRunner().invoke(main, ["verify", str(onnx_dirs[0] / "int8"), str(merged_dir),
                                       "--reference", reference, "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(json_path.read_text())
    assert report["passed"] and len(report["results"]) == 2
    assert report["results"][0]["thresholds"]["min_cosine"] == 0.99  # int8 gate read from the manifest
    assert report["results"][0]["kind"] == "onnx" and report["results"][1]["kind"] == "torch"
    # --min-cosine alone keeps the table's max abs (defect 5)
    result = CliRunner().invoke(main, ["verify", str(merged_dir), "--reference", reference, "--min-cosine", "0.9999",
                                       "--json", str(json_path), "--no-admit"])
    assert result.exit_code == 0, result.output
    assert json.loads(json_path.read_text())["results"][0]["thresholds"] == {"min_cosine": 0.9999, "max_abs": 1e-5}


def test_verify_fails_against_the_base_model(example_dir, onnx_dirs, tmp_path):
    """An artifact of the fine-tune checked against the plain base: exit 2, reasons printed."""
    result = CliRunner().invoke(main, ["verify", str(onnx_dirs[0] / "fp32"), "--reference",
                                       f"torch:{example_dir / 'base'}", "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 3
    assert "FAIL" in result.output and "cosine" in result.output
    assert json.loads((tmp_path / "v.json").read_text())["passed"] is False


def test_onnx_refuses_existing_output(merged_dir, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("x")
    result = CliRunner().invoke(main, ["onnx", str(merged_dir), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--force" in result.output


AUTORAG = Path(__file__).resolve().parents[2] / "shared/data/datasets/autorag-ko/beir/corpus.jsonl"
BROCHURE = "이커머스 솔루션 소개자료.pdf - 46"  # a 644-token product brochure, the worst passage for dynamic int8


@pytest.mark.skipif(not AUTORAG.is_file(), reason="needs ../shared/data/datasets/autorag-ko (the CI has it)")
def test_int8_that_passes_the_short_probes_is_refused_on_a_real_long_document(merged_dir, reference, tmp_path):
    """dynamic int8 (the old default) holds the built-in probes on the example but gives cosine ~0.90
    on a real 644-token passage: gated with --probes on it at the default int8 gate, the export is
    refused with that passage named; weight-only (the default) is admitted on the same probes."""
    rows = [json.loads(line) for line in AUTORAG.read_text(encoding="utf-8").splitlines() if BROCHURE in line]
    probes = tmp_path / "long.jsonl"
    probes.write_text(json.dumps({"text": rows[0]["text"], "kind": "document"}, ensure_ascii=False) + "\n")
    short = export_onnx(merged_dir, tmp_path / "short", reference=reference,
                        options=quiet(precision="int8", int8_method="dynamic"))
    assert short["passed"]  # the built-in probes alone do not see it
    with pytest.raises(VerificationFailed, match="long.jsonl"):
        export_onnx(merged_dir, tmp_path / "dynamic", reference=reference,
                    options=quiet(precision="int8", int8_method="dynamic", probes=ProbeOptions(path=probes)))
    assert not (tmp_path / "dynamic").exists()
    admitted = export_onnx(merged_dir, tmp_path / "weight-only", reference=reference,
                           options=quiet(precision="int8", probes=ProbeOptions(path=probes)))
    assert admitted["passed"]
