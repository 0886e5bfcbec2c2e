"""`moai-export example` and the CLI surface."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from moai_export.artifacts.admission import sha256_file
from moai_export.commands.export_cli import main


def test_example_follows_moai_recipe(example_dir):
    config = json.loads((example_dir / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (64, 128, 0.05)
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert config["base_model_name_or_path"] == str(example_dir / "base")
    model = json.loads((example_dir / "base" / "config.json").read_text())
    assert model["model_type"] == "qwen3" and model["vocab_size"] == 151669
    assert model["head_dim"] in (32, 64, 80, 96, 112, 128)
    summary = json.loads((example_dir / "example.json").read_text())
    assert summary["losses"][-1] < summary["losses"][0]  # the adapter learned something


def test_example_is_deterministic(example_dir, tmp_path):
    result = CliRunner().invoke(main, ["example", "--out", str(tmp_path / "again"), "--size", "tiny",
                                       "--seed", "0", "--steps", "8"])
    assert result.exit_code == 0, result.output
    for name in ("base/model.safetensors", "adapter/adapter_model.safetensors"):
        assert sha256_file(tmp_path / "again" / name) == sha256_file(example_dir / name)


@pytest.mark.parametrize("command", [[], ["example"], ["merge"], ["onnx"], ["verify"], ["triton"], ["vllm"], ["demo"], ["contract"], ["train"]])
def test_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_contract_command(merged_dir):
    result = CliRunner().invoke(main, ["contract", str(merged_dir)])
    assert result.exit_code == 0
    assert json.loads(result.output)["pooling"] == "lasttoken"


def test_unknown_size_is_rejected(tmp_path):
    result = CliRunner().invoke(main, ["example", "--out", str(tmp_path / "x"), "--size", "huge"])
    assert result.exit_code == 2 and not (tmp_path / "x").exists()
