"""The built-in example: a small Qwen3 embedding base plus a LoRA adapter trained on it,
made fully offline so every stage of the pipeline can run (and be tested) anywhere."""

from __future__ import annotations

import json
from pathlib import Path

from ..artifacts.directories import atomic_output_dir, write_manifest
from .base_model import SIZES, build_base
from .train import train_adapter

__all__ = ["SIZES", "build_example"]

# Random-weight bases tolerate a large step; the full shape diverged at 2e-3 (loss 2.8 -> 11.9).
LEARNING_RATES = {"tiny": 2e-3, "small": 1e-3, "full": 2e-4}


def build_example(out: Path, *, size: str = "tiny", seed: int = 0, steps: int = 8, force: bool = False,
                  progress: bool = True) -> dict:
    """Write `out/base` (sentence-transformers model), `out/adapter` (PEFT LoRA adapter) and
    `out/training` (the run's report, curves and model card, as `moai-export train` writes them)."""
    out = Path(out).absolute()
    with atomic_output_dir(out, force=force) as tmp:
        base_dir = tmp / "base"
        base_dir.mkdir()
        build_base(base_dir, size, seed)
        # The adapter records where its base will live once published, as PEFT would record a hub id.
        losses = train_adapter(base_dir, tmp, steps=steps, seed=seed, base_name=str(out / "base"),
                               learning_rate=LEARNING_RATES[size], progress=progress)
        summary = {"size": size, "seed": seed, "steps": steps, "losses": losses}
        (tmp / "example.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        write_manifest(tmp, stage="example", inputs={}, options={"size": size, "seed": seed, "steps": steps})
    return summary
