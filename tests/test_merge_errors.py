"""Bad input: a one-line error, a non-zero exit, and no output directory left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from moai_export.commands.export_cli import main


def run_merge(base, adapter, out, *extra):
    result = CliRunner().invoke(main, ["merge", "--base", str(base), "--adapter", str(adapter),
                                       "--out", str(out), *extra])
    return result


def assert_clean_failure(result, out: Path, message: str, code: int = 1):
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp*"))


@pytest.fixture
def adapter_copy(example_dir, tmp_path):
    path = tmp_path / "adapter"
    shutil.copytree(example_dir / "adapter", path)
    return path


def test_missing_adapter_config(example_dir, adapter_copy, tmp_path):
    (adapter_copy / "adapter_config.json").unlink()
    out = tmp_path / "out"
    assert_clean_failure(run_merge(example_dir / "base", adapter_copy, out), out, "missing adapter_config.json")


def test_malformed_adapter_config(example_dir, adapter_copy, tmp_path):
    (adapter_copy / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 64,')
    out = tmp_path / "out"
    assert_clean_failure(run_merge(example_dir / "base", adapter_copy, out), out, "malformed JSON")


def test_adapter_config_without_rank(example_dir, adapter_copy, tmp_path):
    config = json.loads((adapter_copy / "adapter_config.json").read_text())
    del config["r"]
    (adapter_copy / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_clean_failure(run_merge(example_dir / "base", adapter_copy, out), out, "malformed, no 'r'")


def test_adapter_trained_on_another_base(example_dir, tmp_path):
    """A LoRA made for a wider Qwen3 (hidden 128) on our hidden-64 base."""
    from peft import get_peft_model
    from transformers import Qwen3Config, Qwen3Model

    from moai_export.train import TrainOptions
    from moai_export.train.recipe import lora_config

    other = Qwen3Model(Qwen3Config(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=32, intermediate_size=256))
    with pytest.warns(UserWarning):  # PEFT notes the unnamed base
        config = lora_config(TrainOptions(base="someone/other-base", train=tmp_path / "-", out=tmp_path / "-"))
        config.base_model_name_or_path = "someone/other-base"
        get_peft_model(other, config).save_pretrained(str(tmp_path / "other"))
    out = tmp_path / "out"
    assert_clean_failure(run_merge(example_dir / "base", tmp_path / "other", out), out,
                         "trained on another base")


def test_adapter_recording_another_hub_base(example_dir, adapter_copy, tmp_path, monkeypatch):
    """Base given as a hub id (served from a local HF cache) that differs from the recorded one."""
    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--Qwen--Qwen3-Embedding-0.6B" / "snapshots" / ("0" * 40)
    shutil.copytree(example_dir / "base", snapshot)
    (cache / "models--Qwen--Qwen3-Embedding-0.6B" / "refs").mkdir()
    (cache / "models--Qwen--Qwen3-Embedding-0.6B" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    config = json.loads((adapter_copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen3-Embedding-4B"
    (adapter_copy / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_clean_failure(run_merge("Qwen/Qwen3-Embedding-0.6B", adapter_copy, out), out,
                         "trained on Qwen/Qwen3-Embedding-4B")


def test_target_modules_absent_from_base(example_dir, adapter_copy, tmp_path):
    config = json.loads((adapter_copy / "adapter_config.json").read_text())
    config["target_modules"] = ["c_attn", "c_proj"]  # GPT-2 names
    (adapter_copy / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert_clean_failure(run_merge(example_dir / "base", adapter_copy, out), out, "do not exist in the base model")


def test_adapter_layers_absent_from_base(example_dir, adapter_copy, tmp_path):
    """An adapter for a deeper model: layers.5 does not exist in a 2-layer base."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(adapter_copy / "adapter_model.safetensors"))
    save_file({k.replace("layers.1.", "layers.5."): v for k, v in tensors.items()},
              str(adapter_copy / "adapter_model.safetensors"))
    out = tmp_path / "out"
    assert_clean_failure(run_merge(example_dir / "base", adapter_copy, out), out, "absent from the base model")


def test_truncated_adapter_weights(example_dir, adapter_copy, tmp_path):
    path = adapter_copy / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    out = tmp_path / "out"
    assert_clean_failure(run_merge(example_dir / "base", adapter_copy, out), out, "truncated safetensors")


def test_corrupt_adapter_header(example_dir, adapter_copy, tmp_path):
    path = adapter_copy / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:16] = b"garbage!"
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert_clean_failure(run_merge(example_dir / "base", adapter_copy, out), out, "corrupt safetensors")


def test_truncated_base_weights(example_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(example_dir / "base", base)
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    out = tmp_path / "out"
    assert_clean_failure(run_merge(base, example_dir / "adapter", out), out, "truncated safetensors")


def test_missing_directories(example_dir, tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(run_merge(tmp_path / "nope", example_dir / "adapter", out), out, "no such directory")


def test_hub_id_while_offline(example_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "out"
    result = run_merge("Qwen/Qwen3-Embedding-0.6B", example_dir / "adapter", out)
    assert_clean_failure(result, out, "HF_HUB_OFFLINE is set")
    assert "local directory" in result.output


def test_existing_output_needs_force(example_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = run_merge(example_dir / "base", example_dir / "adapter", out)
    assert result.exit_code == 1 and "pass --force" in result.output
    assert (out / "precious.txt").read_text() == "keep me"
    result = run_merge(example_dir / "base", example_dir / "adapter", out, "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").is_file()


def test_failed_verification_exits_3_and_writes_requested_report(example_dir, tmp_path):
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    # A gate no float model can pass: every component exactly equal. An impossible cosine (1.5) is
    # bad input instead (exit 1, before any work).
    result = run_merge(example_dir / "base", example_dir / "adapter", out, "--min-cosine", "1.5")
    assert result.exit_code == 1 and "min-cosine must be in (0, 1]" in result.output
    result = run_merge(example_dir / "base", example_dir / "adapter", out, "--max-abs", "0",
                       "--report", str(report))
    assert result.exit_code == 3 and "verification FAILED" in result.output
    assert not out.exists()
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["failures"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_midway_leaves_nothing(example_dir, tmp_path, sig):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moai_export.commands.export_cli", "merge", "--base", str(example_dir / "base"),
         "--adapter", str(example_dir / "adapter"), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.tmp*")):  # the temporary output exists: we are midway
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "interrupted: nothing was written" in output
    assert not out.exists() and not list(tmp_path.glob(".out*"))
