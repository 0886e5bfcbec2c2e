"""The pieces sentence-transformers' trainer is built from: the LoRA config, the loss, the IR
evaluator and the TrainingArguments, each from TrainOptions."""

from __future__ import annotations

from pathlib import Path

from ..core.contract import EmbeddingContract
from ..evaluation.retrieval_metrics import METRICS, PRIMARY
from .data import Validation
from .options import TrainOptions

EVAL_NAME = "validation"


def lora_config(options: TrainOptions):
    from peft import LoraConfig

    return LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
                      target_modules=list(options.lora_targets), bias="none")


def ir_evaluator(validation: Validation, contract: EmbeddingContract, batch_size: int, *, progress: bool = False):
    """Binary-relevance IR metrics (the ones `moai-bench retrieval` reports), with the contract's
    prompts: queries carry the instruction, as they will when served."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(
        validation.queries, validation.corpus, validation.relevant, name=EVAL_NAME,
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[1, 10], map_at_k=[10],
        query_prompt=contract.prompt_for("query") or None, corpus_prompt=contract.prompt_for("document") or None,
        batch_size=batch_size, show_progress_bar=progress, write_csv=False)


def metric_key(similarity: str, metric: str = PRIMARY) -> str:
    """The evaluator's key of `metric` (without the trainer's eval_ prefix)."""
    return f"{EVAL_NAME}_{similarity}_{metric}"


def pick_metrics(values: dict, similarity: str, prefix: str = "") -> dict[str, float]:
    """{ndcg@10: ..., mrr@10: ...} out of an evaluator's (or the trainer's eval_*) dict."""
    return {m: float(values[prefix + metric_key(similarity, m)]) for m in METRICS
            if prefix + metric_key(similarity, m) in values}


def prompts(contract: EmbeddingContract) -> dict[str, str]:
    """Column -> prompt: the query column gets the contract's query prompt, documents theirs."""
    out = {"query": contract.prompt_for("query"), "positive": contract.prompt_for("document"),
           "negative": contract.prompt_for("document")}
    return {column: prompt for column, prompt in out.items() if prompt}


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def _launched_distributed() -> bool:
    """Started by torchrun (or another launcher) with more than one process."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_report_to(report_to: str) -> None:
    """Fail now, not after loading the model, when the logging integration is not installed."""
    import importlib.util

    from ..core.errors import MoaiError

    modules = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}.get(report_to, ())
    if modules and not any(importlib.util.find_spec(m) for m in modules):
        raise MoaiError(f"--report-to {report_to} needs the {modules[0]} package: pip install {modules[0]}")


def training_arguments(options: TrainOptions, checkpoints: Path, contract: EmbeddingContract, *,
                       similarity: str | None):
    """SentenceTransformerTrainingArguments for the recipe; `similarity` None: no validation."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    evaluate = similarity is not None
    eval_steps = options.eval_steps if options.eval_steps < 1 else int(options.eval_steps)
    return SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.eval_batch_size,
        learning_rate=options.learning_rate,
        lr_scheduler_type=options.scheduler,
        warmup_steps=options.warmup_ratio,  # transformers 5: a float below 1 is a fraction of the run
        weight_decay=options.weight_decay,
        bf16=options.bf16,
        gradient_checkpointing=options.gradient_checkpointing,
        # non-reentrant: the frozen base gives no input that requires grad, which the reentrant variant needs
        gradient_checkpointing_kwargs={"use_reentrant": False} if options.gradient_checkpointing else None,
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a duplicate in the batch would be a false negative
        prompts=prompts(contract) or None,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=eval_steps if evaluate else None,
        save_strategy="steps" if evaluate else "no",
        save_steps=eval_steps if evaluate else None,
        save_total_limit=options.save_total_limit,
        load_best_model_at_end=evaluate,
        metric_for_best_model=f"eval_{metric_key(similarity)}" if evaluate else None,
        greater_is_better=True,
        logging_steps=options.logging_steps,
        report_to=[] if options.report_to == "none" else [options.report_to],
        seed=options.seed,
        data_seed=options.seed,
        disable_tqdm=not options.progress,
        ddp_find_unused_parameters=False,
        # Without an accelerator, DDP runs on CPU processes over gloo (accelerate needs to be told).
        use_cpu=not _has_accelerator(),
        ddp_backend="gloo" if not _has_accelerator() and _launched_distributed() else None,
        dataloader_pin_memory=_has_accelerator(),
        dataloader_drop_last=False,
        **options.extra,
    )
