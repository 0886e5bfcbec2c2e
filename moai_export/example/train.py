"""Train the example LoRA adapter: MoAI's recipe (r=64, alpha=128, dropout 0.05 on all seven
projections, CachedMultipleNegativesRankingLoss) for a few steps on the built-in triplets."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..contract import EmbeddingContract
from .triplets import TRIPLETS

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_config(base_name: str):
    from peft import LoraConfig

    return LoraConfig(
        r=64,
        lora_alpha=128,
        lora_dropout=0.05,
        target_modules=LORA_TARGETS,
        bias="none",
        base_model_name_or_path=base_name,
    )


def train_adapter(
    base_dir: Path,
    out: Path,
    contract: EmbeddingContract,
    *,
    steps: int,
    seed: int,
    base_name: str,
    learning_rate: float = 2e-3,
    batch_size: int = 8,
    mini_batch_size: int = 4,
    examples: list[tuple[str, ...]] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> list[float]:
    """Train and save a PEFT adapter for the model in `base_dir`; returns the loss per step.

    `examples` are (query, positive) pairs or (query, positive, hard negative) triplets
    (default: the built-in Korean finance triplets); in-batch negatives come from the rest of
    the batch. CachedMultipleNegativesRankingLoss makes the batch size independent of memory:
    `mini_batch_size` is what goes through the model at once."""
    from peft import get_peft_model
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    torch.manual_seed(seed)
    rng = random.Random(seed)
    examples = examples or TRIPLETS
    columns = min(len(example) for example in examples)
    model = SentenceTransformer(str(base_dir), device=device)
    transformer = model[0]
    with warnings.catch_warnings():  # PEFT warns that the recorded base path differs: intended
        warnings.simplefilter("ignore", UserWarning)
        transformer.model = get_peft_model(transformer.model, lora_config(base_name))
    loss_fn = CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    query_prompt = contract.prompt_for("query")
    document_prompt = contract.prompt_for("document")

    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="training LoRA adapter", disable=not progress):
        batch = rng.sample(examples, k=min(batch_size, len(examples)))
        queries, *documents = zip(*(example[:columns] for example in batch))
        features = [model.preprocess(list(queries), prompt=query_prompt or None)]
        features += [model.preprocess(list(column), prompt=document_prompt or None) for column in documents]
        loss = loss_fn(features, torch.zeros(len(batch)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    transformer.model.save_pretrained(str(out))
    _record_base_name(out, base_name)
    return losses


def _record_base_name(adapter_dir: Path, base_name: str) -> None:
    # PEFT records the path the base was loaded from (our temporary directory); record where
    # the base is published instead, as a hub adapter records its base's hub id.
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_name
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
