"""config.json that every supported loader reads the same way, whichever transformers wrote it.

transformers 5 saves RoPE only as `rope_parameters` and the weights' dtype only as `dtype`. The
loaders a merged build is meant to serve elsewhere read the older names: transformers 4.x (4.51 is
the oldest with Qwen3, and what sentence-transformers' ONNX extra, Infinity and many serving images
pin), vLLM before transformers 5, and TEI before 1.9.2 read the top-level `rope_theta` and
`rope_scaling`, and `torch_dtype` for an "auto" dtype. A key a loader does not know is ignored
without a word: transformers 4.51 then rotates with its default `rope_theta` of 10000 instead of
Qwen3's 1,000,000, and every vector drifts (min cosine 0.956 on the tiny example). transformers 5
reads both spellings and prefers `rope_parameters`, so writing both changes nothing there.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "config.json"

# The keys TEI's Qwen3 backend and router deserialize from config.json (text-embeddings-inference
# backends/candle/src/models/qwen3.rs `Qwen3Config` and router/src/lib.rs `ModelConfig`; up to 1.9.1
# `rope_theta` is required, from 1.9.2 `rope_parameters.rope_theta` is accepted instead). Optional
# fields there (head_dim, sliding_window, pad_token_id, id2label, ...) are left out.
TEI_QWEN3_KEYS = (
    "architectures", "model_type", "attention_bias", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
    "rms_norm_eps", "rope_theta", "use_sliding_window", "eos_token_id",
)


def with_legacy_keys(config: dict) -> dict:
    """`config` (as transformers 5 writes it) plus the spellings transformers 4.x reads:
    top-level `rope_theta` and `rope_scaling` from `rope_parameters`, `torch_dtype` from `dtype`."""
    config = dict(config)
    rope = config.get("rope_parameters")
    # Per-layer-type RoPE (a dict of dicts) has no single 4.x spelling; Qwen3's is one flat dict.
    if isinstance(rope, dict) and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        # 4.x keeps only scaling in rope_scaling (null for plain RoPE); partial_rotary_factor is top-level there
        scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
        config["rope_scaling"] = None if rope_type == "default" else scaling
        if "partial_rotary_factor" in rope:
            config["partial_rotary_factor"] = rope["partial_rotary_factor"]
    if "dtype" in config:
        config["torch_dtype"] = config["dtype"]
    return config


def write_portable_config(directory: Path, source: Path | None = None) -> None:
    """Write `directory`/config.json with the legacy keys beside the new ones, from
    `source`/config.json when given (a copy), else rewriting the one transformers just saved."""
    directory = Path(directory)
    config = json.loads((Path(source or directory) / CONFIG_FILE).read_text(encoding="utf-8"))
    text = json.dumps(with_legacy_keys(config), indent=2, sort_keys=True) + "\n"
    (directory / CONFIG_FILE).write_text(text, encoding="utf-8")
