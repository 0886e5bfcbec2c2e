"""`moai-export triton --encoder engine`: the packed engine in the python backend of a REAL
local tritonserver (CPU instance here; KIND_GPU with --engine-device cuda)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from moai_export.artifacts.admission import read_manifest
from moai_export.core.errors import MoaiError, VerificationFailed
from moai_export.embedders import load_embedder
from moai_export.export.triton import TritonOptions, encoder_config, write_repository
from moai_export.launchers.triton_server import runtime_venv

pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and not list(runtime_venv().glob("lib/python3*/site-packages/pytriton/tritonserver")),
    reason="Triton runtime environment missing: run serve/triton/setup_env.sh (make test does)",
)


def test_engine_encoder_serves_and_is_gated_on_a_real_server(example_dir, merged_dir, tmp_path):
    repo = tmp_path / "models"
    with load_embedder(f"peft:{example_dir / 'base'}+{example_dir / 'adapter'}") as reference:
        result = write_repository(merged_dir, repo, TritonOptions(encoder="engine", max_batch_size=8,
                                                                  max_queue_delay_us=20_000),
                                  log=lambda m: None, reference=reference, reference_label="peft")
        assert result["encoder"] == "engine" and result["precision"] == "fp32"
        manifest = read_manifest(repo / "moai_embedding")
        assert [(e["runtime"], e["device"], e["provider"]) for e in manifest["admitted_for"]] == [
            ("triton", "cpu", "engine")]
        assert manifest["admitted_for"][0]["gate"]["min_cosine"] >= 0.99999
        config = (repo / "moai_embedding_encoder" / "config.pbtxt").read_text()
        assert "KIND_CPU" in config and "EXECUTION_ENV_PATH" in config

        # Served: concurrent clients (the dynamic batcher merges them; the engine re-packs them)
        texts = [f"질문 {i}: " + "연회비 " * (1 + 7 * (i % 5)) for i in range(24)]
        with load_embedder(f"triton:{repo}") as served, ThreadPoolExecutor(6) as pool:
            parts = list(pool.map(lambda i: served.encode(texts[i:i + 4], "query"), range(0, len(texts), 4)))
        expected = reference.encode(texts, "query")
        assert ((np.concatenate(parts) * expected).sum(1)).min() >= 0.99999

        # the gate can fail: the same repository against the plain base model is refused, nothing published
        with load_embedder(f"torch:{example_dir / 'base'}") as base, pytest.raises(VerificationFailed):
            write_repository(merged_dir, tmp_path / "other", TritonOptions(encoder="engine", max_batch_size=8),
                             log=lambda m: None, reference=base, reference_label="base")
    assert not (tmp_path / "other").exists()


def test_engine_encoder_on_a_gpu_is_a_gpu_instance(merged_dir, tmp_path):
    options = TritonOptions(encoder="engine", engine_device="cuda", engine_env="/opt/env")
    config = encoder_config(options, 64)
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert config.parameters["EXECUTION_ENV_PATH"].string_value == "/opt/env"
    assert '"dtype": "bf16"' in config.parameters["engine_options"].string_value  # bf16 by default on a GPU
    with pytest.raises(MoaiError, match="no CUDA GPU"):
        write_repository(merged_dir, tmp_path / "gpu", options, log=lambda m: None)


def test_engine_encoder_needs_a_merged_model(tmp_path):
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"")
    with pytest.raises(MoaiError, match="--encoder engine takes a merged model"):
        write_repository(tmp_path / "onnx", tmp_path / "r", TritonOptions(encoder="engine"), log=lambda m: None)
