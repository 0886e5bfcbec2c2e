"""One gate table with one override rule, one registry of kinds (bare directories of every
artifact kind recognised), admission of serving configurations, and the import structure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from moai_export.artifacts.admission import (
    NotAdmitted,
    ServingConfig,
    admission_entry,
    record_admission,
    require_admitted,
    shipped_files,
)
from moai_export.artifacts.directories import MANIFEST_FILE, write_manifest
from moai_export.artifacts.kinds import KINDS, parse_spec
from moai_export.commands.export_cli import main
from moai_export.core.errors import MoaiError
from moai_export.gates.table import GATES, gate_for


def test_an_override_replaces_only_its_own_number():
    """Defect 5: --min-cosine alone used to drop the max-abs gate, --max-abs alone set cosine to 1.0."""
    default = gate_for("onnx", "fp32")
    only_cosine = gate_for("onnx", "fp32", min_cosine=0.9999)
    assert (only_cosine.min_cosine, only_cosine.max_abs) == (0.9999, default.max_abs)
    only_abs = gate_for("onnx", "fp32", max_abs=1e-3)
    assert (only_abs.min_cosine, only_abs.max_abs) == (default.min_cosine, 1e-3)
    assert gate_for("torch", "fp32", max_abs=float("inf")).max_abs is None
    assert gate_for("vllm", "bfloat16") == GATES[("vllm", "bf16")]
    with pytest.raises(MoaiError, match="no parity gate for onnx in bf16"):
        gate_for("onnx", "bf16")
    with pytest.raises(MoaiError, match="min-cosine"):
        gate_for("onnx", "fp32", min_cosine=1.5)


def test_every_kind_has_a_gate_family_and_a_factory():
    families = {family for family, _ in GATES}
    for kind in KINDS:
        assert kind.family in families, kind.name
        module, _, function = kind.factory.partition(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function)), kind.factory


def test_a_gateway_target_is_judged_by_the_backend_it_reports():
    """openai-http in front of vLLM gets vLLM's gate (the merged weights' max abs 1e-5), in front of
    Triton Triton's (the ONNX graph's 1e-4); a gateway that reports no backend fronts Triton."""
    from types import SimpleNamespace

    gateway = parse_spec("openai-http://127.0.0.1:8080/m")[0]
    assert gateway.gate_family(SimpleNamespace(backend_family="vllm")) == "vllm"
    assert gateway.gate_family(SimpleNamespace(backend_family="triton")) == "triton"
    assert gateway.gate_family(SimpleNamespace()) == "triton"
    assert gate_for("vllm", "fp32").max_abs != gate_for("triton", "fp32").max_abs  # the choice matters


def test_bare_directories_of_every_artifact_kind_are_recognised(tmp_path):
    """Defect 4: a vLLM directory was taken for a torch directory."""
    layouts = {
        "onnx": ["model.onnx", "config.json"],
        "vllm": ["vllm_serve.json", "config.json", "model.safetensors"],
        "torch": ["config.json", "model.safetensors"],
        "triton": ["moai_embedding/config.pbtxt", "moai_embedding_encoder/config.pbtxt"],
    }
    for expected, files in layouts.items():
        root = tmp_path / expected
        for name in files:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("{}")
        kind, location, options = parse_spec(str(root))
        assert (kind.name, location, options) == (expected, str(root), {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(MoaiError, match="not an artifact this toolkit recognises"):
        parse_spec(str(tmp_path / "empty"))


def _artifact(tmp_path, stage="onnx"):
    directory = tmp_path / "artifact"
    directory.mkdir()
    (directory / "tokenizer.json").write_text('{"post_processor": [1]}')
    (directory / "model.onnx").write_bytes(b"\0" * 100)
    entry = admission_entry(ServingConfig("onnxruntime", "cpu", "fp32", "cpu"), gate={"min_cosine": 1.0},
                            reference="ref", versions={})
    write_manifest(directory, stage=stage, inputs={}, options={"precision": "fp32"}, admitted_for=[entry])
    return directory


def test_admission_refuses_what_no_gate_ran_and_files_changed_since(tmp_path, capsys):
    directory = _artifact(tmp_path)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {"tokenizer.json", "model.onnx"}  # every shipped file, not only weights
    require_admitted(directory, ServingConfig("onnxruntime", "cpu", "fp32", "cpu"))
    with pytest.raises(NotAdmitted, match="not verified for onnxruntime on cuda in fp32, cuda.*moai-export verify"):
        require_admitted(directory, ServingConfig("onnxruntime", "cuda", "fp32", "cuda"))
    require_admitted(directory, ServingConfig("onnxruntime", "cuda", "fp32", "cuda"), mode="warn")
    assert "SERVING UNVERIFIED" in capsys.readouterr().err
    # a later verification on the serving machine admits the configuration
    record_admission(directory, admission_entry(ServingConfig("onnxruntime", "cuda", "fp32", "cuda"),
                                                gate={}, reference="ref", versions={}))
    require_admitted(directory, ServingConfig("onnxruntime", "cuda", "fp32", "cuda"))
    # damage what serves: the shipped tokenizer file
    (directory / "tokenizer.json").write_text('{"post_processor": [0]}')  # same size, other bytes
    with pytest.raises(NotAdmitted, match="files changed since verification: tokenizer.json changed. Re-export"):
        require_admitted(directory, ServingConfig("onnxruntime", "cpu", "fp32", "cpu"))
    (directory / "model.onnx").write_bytes(b"\0" * 99)
    with pytest.raises(NotAdmitted, match="model.onnx changed size"):
        require_admitted(directory, ServingConfig("onnxruntime", "cpu", "fp32", "cpu"))


def test_directories_nothing_was_claimed_for_are_not_checked(tmp_path):
    require_admitted(tmp_path, ServingConfig("torch", "cuda", "bf16"))  # no manifest: a hub model
    example = _artifact(tmp_path, stage="example")  # the example's base is not a gated artifact
    require_admitted(example, ServingConfig("torch", "cuda", "bf16"))


def test_manifest_lists_every_file_with_hash_and_size(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.txt").write_text("hello")
    files = shipped_files(tmp_path)
    assert files == {"a/b.txt": {"sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
                                 "bytes": 5}}


def test_verify_refuses_a_missing_artifact_before_loading_the_reference(tmp_path):
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "nope"), "--reference", "no/base+no/adapter",
                                       "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 1 and "not a directory" in result.output


@pytest.mark.parametrize("module, must_not_load", [
    ("moai_export.core.contract", "moai_export.model_files.sentence_transformers_format"),
    ("moai_export.commands.bench_cli", "moai_export.commands.export_cli"),
    ("moai_export.embedders.vllm", "moai_export.export.vllm"),
    ("moai_export.artifacts.admission", "numpy"),  # the launchers use it without the toolkit's stack
    ("moai_export.artifacts.kinds", "torch"),
])
def test_no_import_cycles_and_light_modules_stay_light(module, must_not_load):
    code = f"import sys, {module}; print({must_not_load!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
