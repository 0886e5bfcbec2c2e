"""What a training run leaves beside its adapter: training_report.json, training_curves.png
(loss, learning rate, validation NDCG@10) and model_card.md (the base vs fine-tuned table)."""

from __future__ import annotations

from pathlib import Path

from ..artifacts.directories import write_json
from ..evaluation.machine import machine_description
from ..evaluation.retrieval_metrics import METRICS, PRIMARY

REPORT = "training_report.json"
CURVES = "training_curves.png"
MODEL_CARD = "model_card.md"

LABELS = {"ndcg@10": "NDCG@10", "mrr@10": "MRR@10", "recall@1": "Recall@1", "recall@10": "Recall@10",
          "accuracy@1": "Accuracy@1", "map@10": "MAP@10"}


def write_outputs(out: Path, report: dict) -> None:
    report = {**report, "machine": machine_description()}
    write_json(out / REPORT, report)
    plot_curves(report, out / CURVES)
    (out / MODEL_CARD).write_text(model_card(report), encoding="utf-8")


def plot_curves(report: dict, path: Path) -> Path:
    from ..evaluation.plotting import panel_grid, save_figure

    history = report["history"]
    fig, (loss_ax, lr_ax, eval_ax) = panel_grid(3, 3)
    loss_ax.plot([e["step"] for e in history["loss"]], [e["loss"] for e in history["loss"]])
    loss_ax.set(title="training loss", xlabel="step")
    lr_ax.plot([e["step"] for e in history["learning_rate"]], [e["learning_rate"] for e in history["learning_rate"]])
    lr_ax.set(title="learning rate", xlabel="step")
    evals = [(0, report["base_metrics"][PRIMARY])] if report.get("base_metrics") else []
    evals += [(e["step"], e[PRIMARY]) for e in history["eval"] if PRIMARY in e]
    if evals:
        eval_ax.plot(*zip(*evals), marker="o")
        best = [v for s, v in evals if s == report["best_step"]]
        if best:
            eval_ax.axvline(report["best_step"], color="grey", linestyle="--", label=f"best (step {report['best_step']})")
            eval_ax.legend()
    eval_ax.set(title=f"validation {LABELS[PRIMARY]} (step 0: base)", xlabel="step")
    return save_figure(fig, path)


def model_card(report: dict) -> str:
    """A Markdown section for the model card: the recipe and the base vs fine-tuned table."""
    s = report["settings"]
    lines = ["## Training", "",
             f"LoRA adapter on `{s['base_name'] or s['base']}`, trained with `moai-export train` "
             f"(sentence-transformers trainer).", "",
             "| setting | value |", "|---|---|",
             f"| LoRA | r={s['lora_r']}, alpha={s['lora_alpha']}, dropout {s['lora_dropout']}, "
             f"targets {', '.join(s['lora_targets'])} |",
             f"| loss | CachedMultipleNegativesRankingLoss (in-batch negatives, mini-batch {s['mini_batch_size']}) |",
             f"| batch | {report['distributed']['per_device_batch']} per device x {report['distributed']['world_size']} "
             f"device(s) |",
             f"| optimiser | lr {s['learning_rate']:g}, {s['scheduler']} schedule, warmup ratio {s['warmup_ratio']:g}, "
             f"weight decay {s['weight_decay']:g} |",
             f"| length | {s['epochs']:g} epochs (ran {report['epochs_run']:.2f}, {report['global_step']} steps), "
             f"early stopping patience {s['early_stopping_patience']}; best checkpoint: step {report['best_step']} |",
             f"| precision | {'bf16' if s['bf16'] else 'fp32'}"
             f"{', gradient checkpointing' if s['gradient_checkpointing'] else ''} |",
             f"| data | {report['data']['used']} training rows ({report['data']['duplicates']} duplicates, "
             f"{report['data']['empty_dropped']} empty dropped) |"]
    if report.get("base_metrics"):
        v = report["validation"]
        lines += ["", f"Validation: {v['queries']} queries, {v['documents']} documents ({v['source']}); "
                      "binary relevance.", "",
                  "| metric | base | fine-tuned | change |", "|---|---|---|---|"]
        for m in METRICS:
            base, tuned = report["base_metrics"].get(m), report["best_metrics"].get(m)
            if base is not None and tuned is not None:
                bold = "**" if m == PRIMARY else ""
                lines.append(f"| {bold}{LABELS[m]}{bold} | {base:.4f} | {tuned:.4f} | {tuned - base:+.4f} |")
    return "\n".join(lines) + "\n"
