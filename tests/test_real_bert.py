"""A real-weight model: LoRA on all-MiniLM-L6-v2 (BERT, mean pooling, right padding) merges
and verifies the same way as the Qwen3 example."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from moai_export.commands.export_cli import main


def make_bert_adapter(minilm, out):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(str(minilm))
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"],
                        init_lora_weights=False)  # random B: a non-trivial adapter without training
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out))


def test_minilm_lora_merges_and_verifies(minilm, tmp_path):
    make_bert_adapter(minilm, tmp_path / "adapter")
    result = CliRunner().invoke(main, ["merge", "--base", str(minilm), "--adapter", str(tmp_path / "adapter"),
                                       "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "merged" / "moai_parity.json").read_text())
    assert report["passed"] and report["contract"]["pooling"] == "mean"
    # q, k, v, attention output, intermediate, output in 6 layers, plus the (unused) pooler dense
    assert report["checks"]["merge_check"]["adapted_weights"] == 6 * 6 + 1
    assert report["probes"]["truncated"] >= 1 and report["probes"]["max_tokens"] == 256
