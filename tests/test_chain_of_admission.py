"""An unbroken chain of admission: a command that derives an artifact refuses an input whose
files changed since its own gate (hashed in full, not only the small files loaders re-hash) or
that no gate admitted, and gates its output against the chain's root reference, never against
its input alone."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from moai_export.artifacts import admission
from moai_export.artifacts.admission import MANIFEST_FILE, NotAdmitted
from moai_export.artifacts.directories import PARITY_FILE
from moai_export.artifacts.kinds import load_embedder
from moai_export.commands.base import EXIT_ERROR
from moai_export.commands.export_cli import main


def flip_one_byte(path, offset=None):
    """A same-size change deep inside a weights file: invisible to a size check."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def tampered(merged_dir, tmp_path, monkeypatch):
    """The merged directory with one byte flipped in its weights, as if the weights file were too
    large for loaders to re-hash at every start (REHASH_BELOW 0)."""
    monkeypatch.setattr(admission, "REHASH_BELOW", 0)
    copy = tmp_path / "tampered"
    shutil.copytree(merged_dir, copy)
    flip_one_byte(copy / "model.safetensors")
    return copy


def test_a_tampered_input_is_refused_by_every_deriving_command(tampered, tmp_path):
    load_embedder(f"torch:{tampered}").close()  # what a loader does with a large file: size only (documented)
    commands = [("onnx", tampered, "--out", tmp_path / "o"),
                ("vllm", tampered, "--out", tmp_path / "v"),
                ("triton", tampered, "--repo", tmp_path / "t", "--encoder", "engine")]
    for command in commands:
        result = run(*command)
        assert result.exit_code == EXIT_ERROR, (command, result.output)
        assert "model.safetensors changed" in result.output and "since verification" in result.output, result.output
    assert not [p for p in tmp_path.iterdir() if p.name != "tampered"]  # nothing written


def test_a_tampered_onnx_artifact_is_refused_by_triton(onnx_fp32_dir, merged_dir, tmp_path):
    copy = tmp_path / "onnx"
    shutil.copytree(onnx_fp32_dir, copy)
    flip_one_byte(copy / "model.onnx")
    result = run("triton", copy, "--repo", tmp_path / "repo")
    assert result.exit_code == EXIT_ERROR and "model.onnx changed" in result.output, result.output
    (copy / MANIFEST_FILE).unlink()
    # a reference given does not make a manifest-less input admitted
    result = run("triton", copy, "--repo", tmp_path / "repo", "--reference", f"torch:{merged_dir}")
    assert result.exit_code == EXIT_ERROR and "--allow-unverified" in result.output, result.output
    assert not (tmp_path / "repo").exists()


def test_an_export_is_gated_against_the_root_reference_not_its_input(merged_dir, example_dir, onnx_fp32_dir):
    """The default reference of a derived artifact is the chain's root: the PEFT reference the merge
    was gated against (a damaged input compared with itself passes)."""
    root = json.loads((merged_dir / MANIFEST_FILE).read_text())["chain"]["root_reference"]
    assert root == f"peft:{example_dir.resolve() / 'base'}+{example_dir.resolve() / 'adapter'}"
    record = json.loads((onnx_fp32_dir / PARITY_FILE).read_text())
    assert record["reference"] == root and record["chain"]["root_reference"] == root
    parent = record["chain"]["parent"]
    assert parent["stage"] == "merge" and parent["path"] == str(merged_dir.resolve())
    import hashlib

    assert parent["manifest_sha256"] == hashlib.sha256((merged_dir / MANIFEST_FILE).read_bytes()).hexdigest()


def test_a_manifestless_input_needs_allow_unverified_and_yields_an_unverified_artifact(merged_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(merged_dir, bare)
    (bare / MANIFEST_FILE).unlink()
    result = run("onnx", bare, "--out", tmp_path / "o", "--reference", f"torch:{merged_dir}")
    assert result.exit_code == EXIT_ERROR and "--allow-unverified" in result.output, result.output
    result = run("onnx", bare, "--out", tmp_path / "o", "--allow-unverified")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / MANIFEST_FILE).read_text())
    assert manifest["admitted_for"] == [] and "no manifest" in manifest["unverified"]
    with pytest.raises(NotAdmitted, match="derived from an unverified input"):
        load_embedder(f"onnx:{tmp_path / 'o'}")
    load_embedder(f"onnx:{tmp_path / 'o'}?allow_unverified=true").close()
    # and what derives from it is refused too, unless told
    result = run("triton", tmp_path / "o", "--repo", tmp_path / "repo", "--no-verify")
    assert result.exit_code == EXIT_ERROR and "derived from an unverified input" in result.output, result.output
