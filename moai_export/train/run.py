"""One training path for every caller (`moai-export train`, `python -m moai_export.train` under
torchrun, `moai-export example`): sentence-transformers' trainer with a LoRA adapter added
through the model's PEFT support, the recipe's loss and the validation IR evaluator."""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Sequence

from ..artifacts.directories import atomic_output_dir, write_json
from ..core.errors import MoaiError
from ..core.pids import alive, start_time
from ..evaluation.retrieval_metrics import PRIMARY
from ..model_files.model_contract import read_contract
from ..model_files.sources import resolve_model_dir
from .data import TrainingPairs, Validation, beir_validation, read_pairs, split_validation
from .options import TrainOptions, check_options
from .outputs import write_outputs
from .recipe import check_report_to, ir_evaluator, lora_config, metric_key, pick_metrics, training_arguments

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
STATE_FILE = "trainer_state.json"  # the trainer writes it last: a checkpoint with it is complete
RUN_LOCK = "run.lock"  # the process training into OUT, while it runs


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint-N that was written to the end (an interrupted save lacks the state)."""
    done = [p for p in checkpoints.glob("checkpoint-*") if (p / STATE_FILE).is_file()
            and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def live_run(out: Path) -> int | None:
    """The process id of a training run still running into `out`, or None."""
    try:
        lock = json.loads((Path(out) / RUN_LOCK).read_text(encoding="utf-8"))
        pid, started = int(lock["pid"]), lock.get("started")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if alive(pid, started) else None


@contextmanager
def claimed(out: Path):
    """While a run trains, OUT holds its process id (a live one is never replaced or resumed
    by another run); a run that fails before its first complete checkpoint removes the OUT it
    created, so a refused run leaves nothing behind."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RUN_LOCK, {"pid": os.getpid(), "started": start_time(os.getpid())})
    try:
        yield
    except Exception:
        if created and last_complete_checkpoint(out / CHECKPOINTS) is None:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        (out / RUN_LOCK).unlink(missing_ok=True)


def _prepare_out(options: TrainOptions) -> Path | None:
    """Check OUT and return the checkpoint to resume from (None: a fresh run)."""
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise MoaiError(f"{out}: exists and is not a directory")
    running = live_run(out) if rank() == 0 else None  # the other ranks are that run's own
    if running is not None:
        raise MoaiError(f"{out}: a training run is in progress there (process {running}); stop it first, "
                        "or train into another directory")
    if options.resume:
        checkpoint = last_complete_checkpoint(out / CHECKPOINTS)
        if checkpoint is None:
            raise MoaiError(f"--resume: no complete checkpoint under {out / CHECKPOINTS}")
        return checkpoint
    if out.exists() and any(out.iterdir()):
        if not options.force:
            raise MoaiError(f"{out} exists and is not empty (--resume continues its run, --force replaces it)")
        if rank() == 0:
            shutil.rmtree(out)
    return None


def load_data(options: TrainOptions) -> tuple[TrainingPairs, Validation | None]:
    if options.eval_dir is not None and options.eval_split is not None:
        raise MoaiError("give --eval or --eval-split, not both")
    pairs = read_pairs(options.train)
    if options.eval_split is not None:
        return split_validation(pairs, options.eval_split, options.seed)
    return pairs, beir_validation(options.eval_dir) if options.eval_dir is not None else None


def _load_model(base_dir: Path, options: TrainOptions, max_tokens: int):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(base_dir), device="cpu")  # the trainer moves it to its device
    model.max_seq_length = max_tokens
    model.add_adapter(lora_config(options))
    return model


def _adapter_tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "adapter_model.safetensors"))


def save_adapter(model, target: Path, base_name: str, best_checkpoint: Path | None) -> None:
    """The model's adapter as a PEFT directory (what `moai-export merge --adapter` takes). When a
    best checkpoint was loaded, prove the saved weights are that checkpoint's (the trainer only
    logs a failure to load it)."""
    import torch

    with atomic_output_dir(target, force=True) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model[0].auto_model.save_pretrained(str(tmp))
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_name  # where the base lives, not a temporary path
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if best_checkpoint is not None:
            saved, best = _adapter_tensors(tmp), _adapter_tensors(best_checkpoint)
            if saved.keys() != best.keys() or any(not torch.equal(saved[k], best[k]) for k in saved):
                raise MoaiError(f"the best checkpoint {best_checkpoint} did not load into the model")


def train(options: TrainOptions, *, callbacks: Sequence = (), log: Callable[[str], None] = print) -> dict:
    """Train, keep the best adapter, write the report, curves and model card; returns the report.
    Under DDP (torchrun) every rank trains and only rank 0 writes."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
    from transformers import EarlyStoppingCallback

    out = Path(options.out).absolute()
    check_options(options)
    check_report_to(options.report_to)
    resume_from = _prepare_out(options)
    base_dir = resolve_model_dir(options.base, "base model")
    contract = read_contract(base_dir, max_tokens=options.max_tokens)
    pairs, validation = load_data(options)
    main = rank() == 0
    if main:
        c = pairs.counts
        log(f"training data: {c['used']} rows of {c['rows']} ({c['duplicates']} duplicates kept, "
            f"{c['empty_dropped']} with an empty text dropped" + (f", first at {c['first_empty']}" if c["first_empty"]
                                                                   else "") + ")")
        if validation:
            log(f"validation: {validation.describe()}")

    with claimed(out) if main else nullcontext():  # rank 0 claims OUT for the whole run
        model = _load_model(base_dir, options, contract.max_tokens)
        similarity = model.similarity_fn_name
        evaluator = (ir_evaluator(validation, contract, options.eval_batch_size, progress=options.progress and main)
                     if validation else None)
        args = training_arguments(options, out / CHECKPOINTS, contract, similarity=similarity if evaluator else None)
        loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=options.mini_batch_size,
                                                  show_progress_bar=False)
        extra_callbacks = list(callbacks)
        if evaluator is not None and options.early_stopping_patience > 0:
            extra_callbacks.append(EarlyStoppingCallback(early_stopping_patience=options.early_stopping_patience))
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(pairs.columns()),
                                             loss=loss, evaluator=evaluator, callbacks=extra_callbacks)
        # The fresh adapter is zero (lora_B = 0), so this is the base model's score.
        base_metrics = pick_metrics(evaluator(model), similarity) if evaluator else {}
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        seconds = time.perf_counter() - started

        state = trainer.state
        best_checkpoint = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
        report = {
            "settings": options.settings(),
            "base_dir": str(base_dir),
            "contract_prompts": contract.prompts,
            "data": pairs.counts,
            "validation": validation.describe() if validation else None,
            # what the trainer really ran with (not the launcher's environment)
            "distributed": {"world_size": trainer.args.world_size, "per_device_batch": options.batch_size,
                            "global_batch": options.batch_size * trainer.args.world_size},
            "resumed_from": str(resume_from) if resume_from else None,
            "global_step": state.global_step,
            "epochs_run": state.epoch,
            "train_seconds": seconds,
            "train_samples_per_second": result.metrics.get("train_samples_per_second"),
            "primary_metric": PRIMARY,
            "best_step": int(best_checkpoint.name.split("-")[-1]) if best_checkpoint else state.global_step,
            "best_checkpoint": str(best_checkpoint) if best_checkpoint else None,
            "best_metric": state.best_metric,
            "base_metrics": base_metrics,
            "history": _history(state.log_history, similarity),
        }
        # The best checkpoint's evaluation (the model now holds its weights: save_adapter proves it).
        best_eval = [e for e in report["history"]["eval"] if e["step"] == report["best_step"]]
        report["best_metrics"] = ({m: v for m, v in best_eval[-1].items() if m not in ("step", "epoch")}
                                  if best_eval else {})
        best_metrics = report["best_metrics"]
        if main:
            save_adapter(model, out / ADAPTER, options.base_name or options.base, best_checkpoint)
            write_outputs(out, report)
            if (out / CHECKPOINTS).is_dir() and not any((out / CHECKPOINTS).iterdir()):
                (out / CHECKPOINTS).rmdir()  # a run without validation saves no checkpoint
            log(f"adapter written to {out / ADAPTER} (step {report['best_step']}"
                + (f", validation {PRIMARY} {base_metrics[PRIMARY]:.4f} -> {best_metrics[PRIMARY]:.4f}"
                   if evaluator else "") + ")")
    return report


def _history(log_history: list[dict], similarity: str) -> dict:
    """Loss, learning rate and validation metrics per step, from the trainer's log."""
    key = f"eval_{metric_key(similarity)}"
    return {
        "loss": [{"step": e["step"], "loss": e["loss"]} for e in log_history if "loss" in e],
        "learning_rate": [{"step": e["step"], "learning_rate": e["learning_rate"]}
                          for e in log_history if "learning_rate" in e],
        "eval": [{"step": e["step"], "epoch": e.get("epoch"), **pick_metrics(e, similarity, prefix="eval_")}
                 for e in log_history if key in e],
    }
