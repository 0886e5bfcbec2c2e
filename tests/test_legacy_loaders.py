"""The merged build as the rest of the ecosystem loads it: transformers 4.51 (the oldest with Qwen3)
and sentence-transformers 4.1, in their own environment (.venv-legacy, serve/legacy/setup_env.sh),
against the float32 PEFT reference; and the config.json keys TEI reads, which cannot run here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from moai_export.embedders import load_embedder
from moai_export.gates.parity import cosine_rows
from moai_export.gates.probes import probe_set, sizing_tokenizer
from moai_export.model_files.portable_config import TEI_QWEN3_KEYS, with_legacy_keys

ROOT = Path(__file__).resolve().parents[1]
LEGACY_VENV = Path(os.environ.get("MOAI_LEGACY_VENV", ROOT / ".venv-legacy"))
LEGACY_LOADERS = ROOT / "serve" / "legacy" / "embed.py"
QWEN3_ROPE_THETA = 1_000_000.0  # Qwen3-Embedding's; transformers 4.x falls back to 10000 without the key
GATE = 0.99999  # the fp32 cosine gate every variant of the merged build meets

needs_legacy_env = pytest.mark.skipif(
    not os.environ.get("CI") and not (LEGACY_VENV / "bin" / "python").is_file(),
    reason="legacy loaders environment missing: run serve/legacy/setup_env.sh (make test does)",
)


def read_config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text(encoding="utf-8"))


def test_merged_config_spells_rope_and_dtype_for_every_transformers(merged_dir, example_dir):
    config = read_config(merged_dir)
    assert config["rope_parameters"]["rope_theta"] == config["rope_theta"] == QWEN3_ROPE_THETA
    assert config["rope_scaling"] is None  # plain RoPE: 4.x validates a dict here as a scaling type
    assert config["torch_dtype"] == config["dtype"] == "float32"
    # 4.51 defaults sliding_window to 4096 and masks with it even when use_sliding_window is false
    assert config["sliding_window"] is None and config["use_sliding_window"] is False
    # the example base carries Qwen3's real theta, so a loader that misses it is wrong on the tiny model too
    assert read_config(example_dir / "base")["rope_theta"] == QWEN3_ROPE_THETA


def test_merged_config_has_every_key_tei_reads(merged_dir):
    config = read_config(merged_dir)
    assert not [key for key in TEI_QWEN3_KEYS if key not in config]
    assert config["model_type"] == "qwen3" and config["architectures"] and isinstance(config["eos_token_id"], int)


def test_legacy_keys_follow_rope_scaling_and_leave_per_layer_rope_alone():
    yarn = with_legacy_keys({"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0,
                                                 "partial_rotary_factor": 0.5}})
    assert yarn["rope_theta"] == 5e5 and yarn["partial_rotary_factor"] == 0.5
    assert yarn["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0}
    per_layer = {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6}}}
    assert with_legacy_keys(per_layer) == per_layer


def legacy_vectors(models: list[Path], texts: dict[str, dict[str, list[str]]]) -> dict:
    """serve/legacy/embed.py run in .venv-legacy: {"versions", "vectors": {model: {loader: {kind: rows}}}}."""
    done = subprocess.run([str(LEGACY_VENV / "bin" / "python"), str(LEGACY_LOADERS)],
                          input=json.dumps({"models": [str(m) for m in models], "texts": texts}),
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@needs_legacy_env
def test_transformers_4_51_and_sentence_transformers_load_the_merged_build_like_the_reference(
        merged_dir, example_dir, tmp_path):
    with load_embedder(f"peft:{example_dir / 'base'}+{example_dir / 'adapter'}") as reference:
        probes = probe_set(sizing_tokenizer(reference))
        as_given = {kind: [p.text for p in probes if p.kind == kind] for kind in ("query", "document")}
        # sentence-transformers before 5.4 strips every text before tokenizing (this toolkit and 5.4+
        # do not): a text with surrounding whitespace is another text there, as the README says.
        stripped = {kind: [text.strip() for text in texts] for kind, texts in as_given.items()}
        texts = {"transformers": as_given, "sentence_transformers": stripped}
        expected = {loader: {kind: reference.encode(kind_texts, kind) for kind, kind_texts in by_kind.items()}
                    for loader, by_kind in texts.items()}
    # The control: the same build with only what transformers 5 writes (no top-level rope_theta)
    # must fall below the gate there, or this test could not see the key go missing.
    v5_only = tmp_path / "rope-parameters-only"
    shutil.copytree(merged_dir, v5_only)
    config = read_config(v5_only)
    config.pop("rope_theta", None)
    (v5_only / "config.json").write_text(json.dumps(config), encoding="utf-8")

    result = legacy_vectors([merged_dir, v5_only], texts)
    assert result["versions"]["transformers"].startswith("4.51.")

    def min_cosine(model: Path, loader: str) -> float:
        vectors = result["vectors"][str(model)][loader]
        return min(float(cosine_rows(np.asarray(vectors[kind], dtype=np.float32), expected[loader][kind]).min())
                   for kind in vectors)

    figures = {loader: min_cosine(merged_dir, loader) for loader in texts}
    print(f"min cosine to the PEFT reference, {result['versions']}: {figures}")
    assert all(cosine >= GATE for cosine in figures.values()), figures
    without_key = min_cosine(v5_only, "transformers")
    print(f"without rope_theta: min cosine {without_key:.6f}")
    assert without_key < GATE, without_key
