"""Train the example LoRA adapter through `moai-export train`'s path (moai_export.train) with
MoAI's recipe, on the built-in triplets, for a few steps and without validation."""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluation.finance_triplets import TRIPLETS

TRAINING_RUN = "training"  # beside base/ and adapter/: the run's report, curves and model card


def train_adapter(base_dir: Path, out: Path, *, steps: int, seed: int, base_name: str,
                  learning_rate: float = 2e-3, batch_size: int = 8, mini_batch_size: int = 4,
                  progress: bool = True) -> list[float]:
    """Train on the built-in triplets; write the run to `out/training` and the adapter to
    `out/adapter`; returns the training loss per step."""
    from ..train import TrainOptions, train

    out = Path(out)
    data = out / "triplets.jsonl"
    data.write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}, ensure_ascii=False) + "\n"
                            for q, p, n in TRIPLETS), encoding="utf-8")
    options = TrainOptions(base=str(base_dir), train=data, out=out / TRAINING_RUN, base_name=base_name,
                           max_steps=steps, batch_size=batch_size, mini_batch_size=mini_batch_size,
                           learning_rate=learning_rate, seed=seed, bf16=False, gradient_checkpointing=False,
                           progress=progress)
    report = train(options, log=lambda message: None)
    (out / TRAINING_RUN / "adapter").rename(out / "adapter")
    return [entry["loss"] for entry in report["history"]["loss"]]
