"""`merge` writes a verified standalone checkpoint, and a wrong merge FAILS verification."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moai_export.artifacts.directories import MANIFEST_FILE, PARITY_FILE
from moai_export.core.contract import CONTRACT_FILE
from moai_export.core.errors import VerificationFailed
from moai_export.export.merge import MergeOptions, merge
from moai_export.gates.verification import PROBES_FILE
from moai_export.model_files.model_contract import read_contract
from moai_export.model_files.qwen3_tokenizer import appended_end_token


def quiet(**kwargs) -> MergeOptions:
    return MergeOptions(log=lambda message: None, **kwargs)


def test_merged_dir_is_complete_and_standalone(merged_dir, example_dir):
    names = {p.name for p in merged_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "modules.json",
            "1_Pooling", "config_sentence_transformers.json", "sentence_bert_config.json",
            CONTRACT_FILE, MANIFEST_FILE, PARITY_FILE} <= names
    assert not any(n.startswith("adapter") for n in names)
    assert not list(merged_dir.parent.glob(".*tmp*"))  # no temp dir left beside it
    assert read_contract(merged_dir) == read_contract(example_dir / "base")
    import tokenizers

    assert appended_end_token(tokenizers.Tokenizer.from_file(str(merged_dir / "tokenizer.json"))) == "<|endoftext|>"


def test_report_records_figures_hashes_versions(merged_dir, example_dir):
    report = json.loads((merged_dir / PARITY_FILE).read_text())
    assert report["passed"] and report["failures"] == []
    merged, st = report["gates"]
    # the whole cell of the gate table, top-10 agreement included
    assert merged["gate"] == st["gate"] == {"min_cosine": 0.99999, "max_abs": 1e-5, "min_rank_agreement": 1.0}
    assert merged["min_cosine"] >= 0.99999 and merged["max_abs"] <= 1e-5 and merged["rank_agreement_top10"] == 1.0
    assert st["candidate"] == "SentenceTransformer(dir)" and st["passed"]
    assert report["checks"]["adapter_effect"]["min_cosine_base_vs_reference"] < 0.99999
    merge_check = report["checks"]["merge_check"]
    assert merge_check["adapted_weights"] == 14 and merge_check["unchanged"] == []
    assert report["probe_set"]["count"] == len(json.loads((merged_dir / PROBES_FILE).read_text())["probes"])
    assert report["probe_set"]["token_lengths"]["max"] == report["probes"]["max_tokens"]  # a probe is cut there
    assert report["chain"]["root_reference"] == f"peft:{example_dir.resolve() / 'base'}+{example_dir.resolve() / 'adapter'}"
    assert report["probes"]["truncated"] >= 1
    assert set(report["inputs"]["base"]["weights"]) == {"model.safetensors"}
    assert len(report["output"]["weights"]["model.safetensors"]) == 64
    assert {"torch", "transformers", "peft"} <= set(report["versions"])
    manifest = json.loads((merged_dir / MANIFEST_FILE).read_text())
    assert manifest["stage"] == "merge"
    assert manifest["files"]["model.safetensors"]["sha256"] == report["output"]["weights"]["model.safetensors"]
    assert {"tokenizer.json", "modules.json", "1_Pooling/config.json", PARITY_FILE, PROBES_FILE} <= set(manifest["files"])
    admitted = {(a["runtime"], a["device"], a["dtype"]) for a in manifest["admitted_for"]}
    assert admitted == {("torch", "cpu", "fp32"), ("sentence-transformers", "cpu", "fp32")}


def test_plain_sentence_transformer_loads_without_peft(merged_dir, example_dir):
    """The promise to users: SentenceTransformer(dir) embeds like the PEFT reference."""
    from sentence_transformers import SentenceTransformer

    from moai_export.embedders.peft_reference import PeftEmbedder

    model = SentenceTransformer(str(merged_dir), device="cpu")
    assert model.max_seq_length == 1024
    texts = ["BC카드 연회비는 어떻게 되나요?", "해외 결제 수수료는 1%입니다."]
    reference = PeftEmbedder.from_base_and_adapter(example_dir / "base", example_dir / "adapter")
    ours = model.encode_query(texts, convert_to_numpy=True)
    expected = reference.encode(texts, "query")
    assert (np.sum(ours * expected, axis=1) >= 0.99999).all()


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_merge(example_dir, tmp_path, dtype, torch_dtype):
    report = merge(str(example_dir / "base"), str(example_dir / "adapter"), tmp_path / dtype, quiet(dtype=dtype))
    assert report["passed"] and report["dtype"] == dtype
    from safetensors import safe_open

    with safe_open(str(tmp_path / dtype / "model.safetensors"), "pt") as f:
        assert f.get_tensor("layers.0.mlp.down_proj.weight").dtype == torch_dtype


# -- a wrong merge must fail -------------------------------------------------------------


def _zero_lora_b(adapter_dir, out_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(adapter_dir, out_dir)
    tensors = load_file(str(out_dir / "adapter_model.safetensors"))
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()},
              str(out_dir / "adapter_model.safetensors"))


def test_adapter_scaled_to_zero_fails(example_dir, tmp_path):
    _zero_lora_b(example_dir / "adapter", tmp_path / "zero-adapter")
    with pytest.raises(VerificationFailed, match="adapter has no measurable effect"):
        merge(str(example_dir / "base"), str(tmp_path / "zero-adapter"), tmp_path / "out", quiet())
    assert not (tmp_path / "out").exists()


def test_merge_that_returns_base_weights_fails(example_dir, tmp_path, monkeypatch):
    """The field's silent failure: `unload()` (drop the adapter) where `merge_and_unload()` was meant."""
    from peft.tuners.lora import LoraModel

    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, *a, **k: self.unload())
    with pytest.raises(VerificationFailed) as failure:
        merge(str(example_dir / "base"), str(example_dir / "adapter"), tmp_path / "out", quiet())
    assert "unchanged by the merge" in str(failure.value)
    assert "cosine" in str(failure.value)
    assert not (tmp_path / "out").exists()


def test_one_perturbed_layer_fails(example_dir, tmp_path, monkeypatch):
    from peft.tuners.lora import LoraModel

    original = LoraModel.merge_and_unload

    def merge_then_perturb(self, *args, **kwargs):
        model = original(self, *args, **kwargs)
        with torch.no_grad():
            weight = model.layers[1].mlp.down_proj.weight
            weight.add_(torch.randn_like(weight) * 0.01)
        return model

    monkeypatch.setattr(LoraModel, "merge_and_unload", merge_then_perturb)
    messages = []
    with pytest.raises(VerificationFailed, match="cosine"):
        merge(str(example_dir / "base"), str(example_dir / "adapter"), tmp_path / "out",
              MergeOptions(log=messages.append))
    assert "FAILED" in "\n".join(messages)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp*"))
