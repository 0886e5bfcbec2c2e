"""The kind registry is the only list of kinds: a kind added as its module + one entry loads
through the registry, `moai-export verify` (and its admission), `moai-bench` and the help
texts; spec options are typed by the kind that declares them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from moai_export.artifacts.admission import MANIFEST_FILE, NotAdmitted
from moai_export.artifacts.kinds import KINDS, kind_named, load_embedder, parse_spec, registered
from moai_export.core.errors import MoaiError

ROOT = Path(__file__).resolve().parents[1]


def test_a_new_kind_is_its_module_and_its_entry(example_dir, merged_dir, tmp_path):
    from toy_kind import KIND

    from moai_export.commands.bench_cli import main as bench
    from moai_export.commands.export_cli import main as cli

    artifact = tmp_path / "merged"
    shutil.copytree(merged_dir, artifact)
    reference = f"peft:{example_dir / 'base'}+{example_dir / 'adapter'}"
    with registered(KIND):
        assert parse_spec(f"toy:{artifact}?device=cpu")[0] is KIND
        # admission: the merge admitted torch and sentence-transformers, not the new runtime
        with pytest.raises(NotAdmitted, match=r"not verified for toy-runtime on cpu in fp32.*toy:"):
            load_embedder(f"toy:{artifact}")
        with pytest.raises(MoaiError, match="no config.json; pass a directory written by `moai-export merge`"):
            load_embedder(f"toy:{tmp_path}")

        result = CliRunner().invoke(cli, ["verify", f"toy:{artifact}", "--reference", reference,
                                          "--json", str(tmp_path / "verify.json")])
        assert result.exit_code == 0, result.output
        [row] = json.loads((tmp_path / "verify.json").read_text())["results"]
        assert row["kind"] == "toy" and row["admitted"] and row["thresholds"]["min_cosine"] == 0.99999
        manifest = json.loads((artifact / MANIFEST_FILE).read_text())
        assert "toy-runtime" in {entry["runtime"] for entry in manifest["admitted_for"]}
        with load_embedder(f"toy:{artifact}") as toy:  # admitted now
            assert toy.encode(["카드"], "query").shape == (1, toy.dims)

        out = tmp_path / "bench"
        result = CliRunner().invoke(bench, ["parity", "--reference", reference, "--target", f"toy=toy:{artifact}",
                                            "--strict", "--quiet", "--out", str(out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        [row] = json.loads((out / "results.json").read_text())["results"]["targets"]
        assert row["passed"] and row["gate"]["min_cosine"] == 0.99999  # the torch family's fp32 cell
    assert "toy" not in {kind.name for kind in KINDS}
    with pytest.raises(MoaiError, match="unknown kind 'toy'"):
        kind_named("toy")


def test_spec_options_are_typed_by_the_kind_strictly(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    spec = f"onnx:{tmp_path}"
    for word, value in (("true", True), ("no", False), ("OFF", False), ("1", True), ("0", False), ("yes", True)):
        assert parse_spec(f"{spec}?allow_unverified={word}")[2] == {"allow_unverified": value}
    with pytest.raises(MoaiError, match="option 'allow_unverified' of onnx targets is a boolean"):
        parse_spec(f"{spec}?allow_unverified=maybe")
    with pytest.raises(MoaiError, match="option 'compile' of engine targets is a boolean"):
        parse_spec(f"engine:{tmp_path}?compile=sure")
    assert parse_spec(f"engine:{tmp_path}?compile=no&max_batch_tokens=512")[2] == {"compile": False,
                                                                                 "max_batch_tokens": 512}
    with pytest.raises(MoaiError, match="option 'intra_op_threads' of onnx targets takes a number"):
        parse_spec(f"{spec}?intra_op_threads=two")
    # a string option stays a string: "1" is not turned into an integer before the kind sees it
    assert parse_spec(f"triton:{tmp_path}?model=1")[2] == {"model": "1"}
    with pytest.raises(MoaiError, match=r"option 'colour' is not known for onnx targets \(known: "):
        parse_spec(f"{spec}?colour=red")
    # remote kinds check nothing local, so they take no allow_unverified
    with pytest.raises(MoaiError, match="option 'allow_unverified' is not known for triton-grpc"):
        parse_spec("triton-grpc://127.0.0.1:8001/m?allow_unverified=true")


def test_the_readme_kinds_table_is_the_registry():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("| spec | variant |")
    table = readme[start:readme.index("\n\n", start)]
    named = set(re.findall(r"`(?:peft:)?([a-z-]+)(?::|://)", table)) | ({"peft"} if "BASE+ADAPTER" in table else set())
    assert named == {kind.name for kind in KINDS}


def test_help_texts_name_every_kind():
    from moai_export.commands.bench_cli import TARGET_HELP
    from moai_export.commands.export_cli import VERIFY_HELP

    for kind in KINDS:
        assert kind.prefix in VERIFY_HELP and kind.prefix in TARGET_HELP, kind.name
    for kind in (k for k in KINDS if k.recognised):
        assert all(pattern in VERIFY_HELP for pattern in kind.files), kind.name
