"""The files of the three models in a staging directory: python-backend sources, tokenizer files,
warm-up inputs, the graph or merged weights (hard-linked), configs, and the ensemble's manifest
covering all three (a repository is verified, and admitted, as a whole)."""

from __future__ import annotations

import json
import os
import shutil
import struct
from importlib import resources
from pathlib import Path

from ...artifacts.admission import MANIFEST_FILE
from ...artifacts.directories import PARITY_FILE, write_json
from ...core.contract import EmbeddingContract
from ...embedders.onnx_runtime import ONNX_DATA, ONNX_FILE
from ...gates.verification import PROBES_FILE
from ...model_files.contract_tokenizer import write_tokenizer_files
from ...model_files.triton_config import CONFIG_FILE
from .model_configs import encoder_config, ensemble_config, to_text, tokenizer_config
from .options import TritonOptions

WARMUP_TEXT = "BC카드 연회비는 어떻게 되나요?"


def write_models(staging: Path, artifact: Path, contract: EmbeddingContract, options: TritonOptions,
                  precision: str) -> None:
    names = options.model_names()
    version = str(options.version)
    # tokenizer
    tok_dir = staging / names["tokenizer"] / version
    tok_dir.mkdir(parents=True)
    copy_source("tokenizer_model.py", tok_dir / "model.py")
    copy_source("input_rules.py", tok_dir / "moai_input_rules.py", package="moai_export.core")
    write_tokenizer_files(artifact, contract, tok_dir, with_config=False)
    contract.save(tok_dir)
    (staging / names["tokenizer"] / "warmup").mkdir(exist_ok=True)
    raw = WARMUP_TEXT.encode("utf-8")
    (staging / names["tokenizer"] / "warmup" / "text").write_bytes(struct.pack("<I", len(raw)) + raw)
    write_config(staging / names["tokenizer"], tokenizer_config(options))

    # encoder
    enc_dir = staging / names["encoder"] / version
    enc_dir.mkdir(parents=True)
    if options.encoder == "engine":  # the merged model's files as they are (weights hard-linked)
        for path in sorted(artifact.iterdir()):
            if path.is_file() and path.name not in (MANIFEST_FILE, PARITY_FILE, PROBES_FILE):
                link_or_copy(path, enc_dir / path.name)
        copy_source("engine_model.py", enc_dir / "model.py")
    for name in (ONNX_FILE, ONNX_DATA):
        if (artifact / name).is_file():
            link_or_copy(artifact / name, enc_dir / name)
    if options.encoder == "python":
        copy_source("encoder_model.py", enc_dir / "model.py")
        contract.save(enc_dir)
    (staging / names["encoder"] / "warmup").mkdir(exist_ok=True)
    (staging / names["encoder"] / "warmup" / "ones").write_bytes(struct.pack("<8q", *([1] * 8)))
    write_config(staging / names["encoder"], encoder_config(options, contract.dims))

    # ensemble (+ the contract and the artifact's parity report, for people)
    ens_dir = staging / names["ensemble"]
    (ens_dir / version).mkdir(parents=True, exist_ok=True)
    write_config(ens_dir, ensemble_config(options, contract, precision))
    contract.save(ens_dir)
    if (artifact / PARITY_FILE).is_file():
        shutil.copyfile(artifact / PARITY_FILE, ens_dir / "onnx_artifact_parity.json")


def rewrite_manifest_files(staging: Path, names: dict) -> None:
    """The ensemble's manifest covers the files of all three models (relative to the repository):
    the repository is verified, and admitted, as a whole."""
    from ...artifacts.admission import MANIFEST_FILE, file_record

    path = staging / names["ensemble"] / MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["files"] = {
        p.relative_to(staging).as_posix(): file_record(p)
        for model in names.values() for p in sorted((staging / model).rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    manifest["files_root"] = ".."
    write_json(path, manifest)


def link_tree(src: Path, dst: Path) -> None:
    """A copy of `src` in `dst` whose files are hard links (graphs are gigabytes)."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(path, target)


def write_config(model_dir: Path, config) -> None:
    (model_dir / CONFIG_FILE).write_text(to_text(config), encoding="utf-8")


def copy_source(name: str, dst: Path, package: str = "moai_export.export.triton_backend") -> None:
    source = resources.files(package).joinpath(name)
    dst.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible: an fp32 graph of the full model is 2.4 GB."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
