"""`moai-export train`: the recipe on sentence-transformers' trainer, on a tiny random Qwen3 base."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from moai_export.commands.export_cli import main
from moai_export.core.errors import MoaiError
from moai_export.evaluation.finance_triplets import TRIPLETS
from moai_export.train import TrainOptions, train
from moai_export.train.data import read_pairs
from moai_export.train.recipe import training_arguments

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(example_dir) -> Path:
    return example_dir / "base"


def write_pairs(path: Path, rows=TRIPLETS) -> Path:
    path.write_text("".join(json.dumps({"query": q, "positive": p, "negative": n}, ensure_ascii=False) + "\n"
                            for q, p, n in rows), encoding="utf-8")
    return path


def write_beir(directory: Path, relevant_column: int) -> Path:
    """A BEIR directory over the triplets' texts: query i is relevant to column `relevant_column`
    (1: its positive, 2: its hard negative) of row i."""
    directory.mkdir()
    corpus = [{"_id": f"d{i}-{c}", "text": row[c]} for i, row in enumerate(TRIPLETS) for c in (1, 2)]
    (directory / "corpus.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in corpus))
    (directory / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": row[0]}, ensure_ascii=False)
                                                     + "\n" for i, row in enumerate(TRIPLETS)))
    (directory / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}-{relevant_column}\t1\n" for i in range(len(TRIPLETS))))
    return directory


def test_best_checkpoint_is_the_validation_peak_and_merges(base, tmp_path):
    # Validation calls each query's hard negative relevant: training on the pairs drives it
    # down, so the curve peaks early and the last weights are not the best ones.
    beir = write_beir(tmp_path / "beir", relevant_column=2)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "--base", str(base), "--train", str(write_pairs(tmp_path / "pairs.jsonl")), "--eval", str(beir),
        "--out", str(out), "--epochs", "2", "--batch-size", "4", "--mini-batch-size", "2", "--lr", "3e-3",
        "--eval-steps", "2", "--early-stopping-patience", "0", "--no-bf16", "--no-gradient-checkpointing"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "training_report.json").read_text())
    curve = {e["step"]: e["ndcg@10"] for e in report["history"]["eval"]}
    assert sorted(curve) == [2, 4, 6, 8]  # two epochs of 4 steps, evaluated every 2
    assert report["best_step"] == max(curve, key=curve.get) < 8, curve
    assert report["best_metrics"]["ndcg@10"] == pytest.approx(curve[report["best_step"]])
    assert report["base_metrics"]["ndcg@10"] > curve[8]
    best = load_file(out / "checkpoints" / f"checkpoint-{report['best_step']}" / "adapter_model.safetensors")
    kept = load_file(out / "adapter" / "adapter_model.safetensors")
    assert kept.keys() == best.keys() and all((kept[k] == best[k]).all() for k in kept)
    assert (out / "training_curves.png").stat().st_size > 0
    assert "| **NDCG@10** |" in (out / "model_card.md").read_text()

    merged = CliRunner().invoke(main, ["merge", "--base", str(base), "--adapter", str(out / "adapter"),
                                       "--out", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output


class InterruptAt:
    """Ctrl-C after a given step; records the arguments and the model the trainer got."""

    def __new__(cls, step: int, seen: dict):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                seen.update(bf16=args.bf16, gradient_checkpointing=model[0].auto_model.is_gradient_checkpointing)

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise KeyboardInterrupt

        return Callback()


def test_interrupted_run_resumes_from_its_last_checkpoint_with_bf16_and_checkpointing(base, tmp_path):
    options = TrainOptions(base=str(base), train=write_pairs(tmp_path / "pairs.jsonl"), out=tmp_path / "run",
                           eval_split=0.25, batch_size=4, mini_batch_size=2, max_steps=6, eval_steps=2,
                           learning_rate=2e-3, early_stopping_patience=0, progress=False)
    seen: dict = {}
    with pytest.raises(KeyboardInterrupt):
        train(options, callbacks=[InterruptAt(3, seen)], log=lambda m: None)
    assert seen == {"bf16": True, "gradient_checkpointing": True}  # the recipe's defaults reach the trainer
    assert not (tmp_path / "run" / "adapter").exists()
    report = train(TrainOptions(**{**options.__dict__, "resume": True}), log=lambda m: None)
    assert report["resumed_from"].endswith("checkpoint-2")
    assert report["global_step"] == 6
    assert [e["step"] for e in report["history"]["eval"]] == [2, 4, 6]


def test_recipe_defaults_reach_the_training_arguments(base, tmp_path):
    options = TrainOptions(base=str(base), train=tmp_path / "x.jsonl", out=tmp_path / "run")
    from moai_export.model_files.model_contract import read_contract

    contract = read_contract(base)
    args = training_arguments(options, tmp_path / "c", contract, similarity="cosine")
    assert (args.per_device_train_batch_size, args.learning_rate, args.warmup_steps, args.weight_decay,
            args.num_train_epochs) == (256, 1e-4, 0.1, 0.01, 3.0)
    assert args.lr_scheduler_type.value == "cosine" and args.bf16 and args.gradient_checkpointing
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_validation_cosine_ndcg@10"
    assert args.prompts == {"query": contract.prompt_for("query")}  # documents carry no prompt
    off = training_arguments(TrainOptions(**{**options.__dict__, "bf16": False, "gradient_checkpointing": False}),
                             tmp_path / "c", contract, similarity="cosine")
    assert not off.bf16 and not off.gradient_checkpointing


@pytest.mark.parametrize("content, message", [
    ('{"query": "q", "positive": "p"}\nnot json\n', "pairs.jsonl:2: not valid JSON"),
    ('{"query": "q", "positive": "p"}\n{"query": "q2"}\n', "pairs.jsonl:2: no 'positive'"),
    ('{"query": "q", "positive": 3}\n', "pairs.jsonl:1: 'positive' must be a string"),
    ('{"query": "a", "positive": "p"}\n{"query": "b", "positive": "p", "negative": "n"}\n',
     "pairs.jsonl:2: has a 'negative' unlike the rows before it"),
    ('{"query": "a", "positive": "p"}\n', "need at least 2 usable rows"),
])
def test_bad_training_data_names_file_and_line(tmp_path, content, message):
    (tmp_path / "pairs.jsonl").write_text(content)
    with pytest.raises(MoaiError, match=message):
        read_pairs(tmp_path / "pairs.jsonl")


def test_duplicates_and_empty_texts_are_counted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"query": "a", "positive": "p"}, {"query": "a", "positive": "p"}, {"query": " ", "positive": "p"},
            {"query": "b", "positive": "r"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    pairs = read_pairs(tmp_path / "pairs.parquet")
    assert pairs.counts["duplicates"] == 1 and pairs.counts["empty_dropped"] == 1
    assert pairs.counts["first_empty"].endswith("pairs.parquet:row 3") and pairs.counts["used"] == 3


def test_cli_refuses_bad_data_with_one_error_line(base, tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"query": "q"}\n')
    result = CliRunner().invoke(main, ["train", "--base", str(base), "--train", str(tmp_path / "pairs.jsonl"),
                                       "--eval-split", "0.5", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "pairs.jsonl:1: no 'positive'" in result.output
    assert not (tmp_path / "run").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_only_rank_zero_writes(base, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "moai_export.train", "--base", str(base), "--train", str(write_pairs(tmp_path / "pairs.jsonl")),
         "--eval-split", "0.25", "--out", str(out), "--batch-size", "2", "--mini-batch-size", "2",
         "--max-steps", "2", "--eval-steps", "2", "--no-bf16", "--no-gradient-checkpointing", "--lr", "2e-3"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "training_report.json").read_text())
    assert report["distributed"] == {"world_size": 2, "per_device_batch": 2, "global_batch": 4}
    assert report["global_step"] == 2  # 12 rows, 4 per global step
    assert proc.stderr.count("adapter written to") == 1  # rank 0 alone writes (and says so)
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "checkpoints", "model_card.md",
                                                     "training_curves.png", "training_report.json"]


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorboard") is not None, reason="tensorboard installed")
def test_report_to_a_missing_integration_is_refused_before_loading(base, tmp_path):
    write_pairs(tmp_path / "pairs.jsonl")
    result = CliRunner().invoke(main, ["train", "--base", str(base), "--train", str(tmp_path / "pairs.jsonl"),
                                       "--eval-split", "0.5", "--out", str(tmp_path / "run"),
                                       "--report-to", "tensorboard"])
    assert result.exit_code == 1 and "pip install tensorboard" in result.output


def _train_args(base, tmp_path, *extra) -> list[str]:
    return ["train", "--base", str(base), "--train", str(write_pairs(tmp_path / "pairs.jsonl")), "--out",
            str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--mini-batch-size", "2", "--no-bf16",
            "--no-gradient-checkpointing", *extra]


def test_a_training_file_that_is_not_utf8_is_one_error_line(base, tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes('{"query": "caf\u00e9", "positive": "p"}\n'.encode("latin-1"))
    result = CliRunner().invoke(main, ["train", "--base", str(base), "--train", str(tmp_path / "latin1.jsonl"),
                                       "--eval-split", "0.5", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # not a UnicodeDecodeError
    assert "latin1.jsonl:1: not UTF-8 text (byte 15 of the line is 0xe9)" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("lr", ["-1", "nan", "0"])
def test_a_learning_rate_that_cannot_learn_is_a_usage_error_before_anything_is_written(base, tmp_path, lr):
    result = CliRunner().invoke(main, _train_args(base, tmp_path, "--eval-split", "0.25", "--lr", lr))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Invalid value for '--lr'" in result.output
    assert not (tmp_path / "run").exists()
    with pytest.raises(MoaiError, match="learning rate"):  # the library refuses it too, before any work
        train(TrainOptions(base=str(base), train=tmp_path / "pairs.jsonl", out=tmp_path / "run", eval_split=0.25,
                           learning_rate=float(lr)), log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_validation_whose_qrels_name_only_absent_documents_is_refused(base, tmp_path):
    beir = write_beir(tmp_path / "beir", relevant_column=1)
    qrels = (beir / "qrels.tsv").read_text().replace("\td", "\tgone-d")  # every relevant id absent from the corpus
    (beir / "qrels.tsv").write_text(qrels)
    result = CliRunner().invoke(main, _train_args(base, tmp_path, "--eval", str(beir)))
    assert result.exit_code == 1, result.output
    assert "no relevant document of the qrels is in corpus.jsonl" in result.output
    assert not (tmp_path / "run").exists()


def test_validation_keeps_only_the_qrels_of_documents_in_the_corpus(tmp_path):
    from moai_export.train.data import beir_validation

    beir = write_beir(tmp_path / "beir", relevant_column=1)
    lines = (beir / "qrels.tsv").read_text().splitlines()
    (beir / "qrels.tsv").write_text("\n".join(lines[:1] + [lines[1].replace("\td", "\tgone-d")] + lines[2:]) + "\n")
    validation = beir_validation(beir)
    assert "q0" not in validation.queries and len(validation.queries) == len(TRIPLETS) - 1
    assert all(docs <= validation.corpus.keys() for docs in validation.relevant.values())


@pytest.mark.parametrize("given", [["--eval-split", "0.25", "--eval", "."], []])
def test_eval_and_eval_split_both_or_neither_is_a_usage_error(base, tmp_path, given):
    result = CliRunner().invoke(main, _train_args(base, tmp_path, *given))
    assert result.exit_code == 2, result.output
    assert "--eval" in result.output and not (tmp_path / "run").exists()


def test_force_does_not_delete_a_training_run_in_progress(base, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    running = subprocess.Popen(
        [sys.executable, "-m", "moai_export.commands.export_cli", *_train_args(base, tmp_path, "--eval-split", "0.25"),
         "--max-steps", "1000", "--eval-steps", "1", "--early-stopping-patience", "0", "--lr", "2e-3"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out.is_dir() and any(out.iterdir())):
            assert running.poll() is None and time.monotonic() < deadline, running.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        replaced = CliRunner().invoke(main, _train_args(base, tmp_path, "--eval-split", "0.25", "--force",
                                                        "--max-steps", "1"))
        assert replaced.exit_code == 1, replaced.output
        assert f"a training run is in progress there (process {running.pid})" in replaced.output
        assert running.poll() is None and out.is_dir()
    finally:
        os.killpg(running.pid, signal.SIGKILL)
        running.wait()
    from moai_export.train.run import live_run

    assert live_run(out) is None  # the killed run's lock no longer holds: --force may replace it
