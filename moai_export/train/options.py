"""The training settings, with MoAI's recipe (the MoAI-Embedding-0.6B-LoRA model card) as defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REPORT_TO = ("none", "tensorboard", "wandb")


@dataclass
class TrainOptions:
    base: str  # local sentence-transformers directory or hub id
    train: Path  # JSON lines or parquet: query, positive[, negative]
    out: Path
    eval_dir: Path | None = None  # BEIR directory (what `moai-bench retrieval` reads)
    eval_split: float | None = None  # or: hold out this fraction of the training queries
    # LoRA
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = LORA_TARGETS
    # loss: CachedMultipleNegativesRankingLoss; the mini-batch bounds memory, not the negatives
    mini_batch_size: int = 32
    batch_size: int = 256  # per device
    # optimiser
    learning_rate: float = 1e-4
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    # length
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    eval_steps: float = 0.1  # < 1: a fraction of the whole run; else every this many steps
    early_stopping_patience: int = 3  # evaluations without a better NDCG@10; 0 turns it off
    save_total_limit: int | None = 3  # the best checkpoint is always kept
    # precision and memory
    bf16: bool = True
    gradient_checkpointing: bool = True
    # the rest
    max_tokens: int | None = None  # default: the base's contract
    seed: int = 0
    report_to: str = "none"
    resume: bool = False
    force: bool = False
    logging_steps: int = 1
    eval_batch_size: int = 64
    base_name: str | None = None  # recorded in the adapter as its base (default: --base)
    progress: bool = True
    extra: dict = field(default_factory=dict)  # more TrainingArguments, verbatim

    def settings(self) -> dict:
        """The options as JSON-ready values (for the report)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out


def learning_rate_problem(value: float) -> str | None:
    """Why a run with this learning rate could not learn (None: it can). The optimiser itself
    takes 0 (every step changes nothing) and reports the rest only after the model has loaded."""
    if math.isnan(value) or math.isinf(value):
        return "not a finite number"
    if value < 0:
        return "negative (training would climb the loss)"
    if value == 0:
        return "zero (no step would change a weight)"
    return None


def check_options(options: TrainOptions) -> None:
    """Refuse, before anything loads or is written, a run that could not learn."""
    from ..core.errors import MoaiError

    problem = learning_rate_problem(options.learning_rate)
    if problem:
        raise MoaiError(f"learning rate {options.learning_rate:g}: {problem}")
