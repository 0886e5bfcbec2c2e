"""`moai-export`: thin click commands over the library; no logic of their own."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import click

from .. import __version__
from ..artifacts.kinds import describe_recognised, kind_names
from ..core.errors import MoaiError
from ..core.input_rules import KINDS
from ..export.int8 import INT8_METHODS
from .base import (
    EXIT_INTERRUPTED,
    EXIT_VERIFICATION_FAILED,
    MoaiGroup,
    allow_unverified_option,
    gate_options,
    library_option,
    overrides_from,
    probe_options,
)

DTYPE_CHOICE = click.Choice(["fp32", "bf16", "fp16"])

# Each command's defaults are those of the options the library takes (cli_base.library_option).
example_option = partial(library_option, ".example:build_example")
merge_option = partial(library_option, ".export.merge:MergeOptions")
onnx_option = partial(library_option, ".export.onnx:OnnxOptions")
triton_option = partial(library_option, ".export.triton:TritonOptions")
vllm_option = partial(library_option, ".export.vllm:VllmOptions")
train_option = partial(library_option, ".train.options:TrainOptions")
demo_option = partial(library_option, ".commands.demo:run_demo")
gateway_option = partial(library_option, ".gateway.config:GatewayConfig")
embed_option = partial(library_option, ".embed_job.job:EmbedOptions")
corpus_option = partial(library_option, ".embed_job.corpus:CorpusOptions")


@click.group(cls=MoaiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moai-export")
def main() -> None:
    """Turn a LoRA adapter on Qwen3-Embedding into production artifacts, each one proven
    to embed like the float32 PEFT reference before it is written.

    \b
    Typical flow (every step exits non-zero and writes nothing if its gate fails):
      moai-export example --out build/example
      moai-export merge --base build/example/base --adapter build/example/adapter --out build/merged
      moai-export onnx build/merged --out build/onnx-int8 --precision int8 \\
          --reference build/example/base+build/example/adapter
      moai-export triton build/onnx-int8 --repo triton_models     # then serve/triton/run_local.sh triton_models
      moai-export vllm build/merged --out build/vllm              # then serve/vllm/run.sh build/vllm
      moai-export verify triton-grpc://127.0.0.1:8001/moai_embedding --reference build/example/base+build/example/adapter
    Or all of it on the built-in example: moai-export demo
    Retrain the adapter with MoAI's recipe: moai-export train --help
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create (base/ and adapter/).")
@example_option("--size", type=click.Choice(["tiny", "small", "full"]),
                help="tiny/small for tests and demos; full = the real Qwen3-Embedding-0.6B shape (28 layers, 1024 hidden).")
@example_option("--seed", type=int, help="Seeds weights, data order and dropout.")
@example_option("--steps", type=click.IntRange(min=1), help="LoRA training steps.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def example(out: Path, size: str, seed: int, steps: int, force: bool) -> None:
    """Build the offline example: a random-weight Qwen3 embedding base (MoAI's tokenizer,
    prompts and pooling) and a LoRA adapter trained on it with MoAI's recipe."""
    from ..example import build_example

    summary = build_example(out, size=size, seed=seed, steps=steps, force=force)
    click.echo(f"example ({size}) written to {out}: base/ and adapter/; "
               f"training loss {summary['losses'][0]:.3f} -> {summary['losses'][-1]:.3f}")


@main.command()
@click.option("--base", required=True, help="Base model: local directory or hub id (e.g. Qwen/Qwen3-Embedding-0.6B).")
@click.option("--adapter", required=True, help="LoRA adapter: local directory or hub id.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create.")
@merge_option("--dtype", type=DTYPE_CHOICE, help="dtype of the saved weights.")
@click.option("--max-tokens", type=click.IntRange(min=2), default=None,
              help="Override the maximum sequence length (default: from the model's sentence-transformers files).")
@gate_options
@probe_options
@click.option("--allow-base-mismatch", is_flag=True, help="Merge even if the adapter records a different base hub id.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
              help="Also write the JSON report here (written even when verification fails).")
def merge(base, adapter, out, dtype, max_tokens, min_cosine, max_abs, min_rank_agreement, probes, allow_base_mismatch,
          force, report_path):
    """Merge ADAPTER into BASE and write a standalone sentence-transformers model to OUT.

    The output is published only after it passes verification against the float32 PEFT
    reference (see moai_parity.json inside it); on failure nothing is left behind and the
    exit code is 3.
    """
    from ..export.merge import MergeOptions
    from ..export.merge import merge as run_merge

    options = MergeOptions(dtype=dtype, max_tokens=max_tokens, force=force,
                           overrides=overrides_from(min_cosine, max_abs, min_rank_agreement), probes=probes,
                           allow_base_mismatch=allow_base_mismatch, report_path=report_path, log=_log)
    run_merge(base, adapter, out, options)
    click.echo(f"merged model written to {out} (verified; report: {out / 'moai_parity.json'})")


@main.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create.")
@onnx_option("--precision", type=click.Choice(["fp32", "fp16", "int8"]),
             help="fp32; fp16 (traced from a half-precision model); int8 (quantized as --int8-method says).")
@onnx_option("--int8-method", type=click.Choice(list(INT8_METHODS)),
             help="int8 only: " + "; ".join(f"{name}: {text}" for name, text in INT8_METHODS.items()) + ".")
@click.option("--reference", default=None,
              help="Reference for the gate, e.g. BASE+ADAPTER (the PEFT reference). Default: the root reference "
                   "recorded in SOURCE's chain (the PEFT reference its merge was gated against).")
@onnx_option("--opset", type=click.IntRange(min=14), help="ONNX opset.")
@gate_options
@probe_options
@allow_unverified_option
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def onnx(source, out, precision, int8_method, reference, opset, min_cosine, max_abs, min_rank_agreement, probes,
         allow_unverified, force):
    """Export the merged model SOURCE to ONNX with pooling and normalization in the graph.

    The artifact takes int64 input_ids and attention_mask and returns sentence_embedding
    [batch, dims] float32. It is published only if it passes the parity gate against the
    reference; otherwise nothing is written and the exit code is 3.
    """
    from ..export.onnx import OnnxOptions, export_onnx

    options = OnnxOptions(precision=precision, int8_method=int8_method, opset=opset,
                          overrides=overrides_from(min_cosine, max_abs, min_rank_agreement), probes=probes,
                          force=force, log=_log, allow_unverified=allow_unverified)
    export_onnx(source, out, reference=_reference(reference), reference_label=reference, options=options)
    click.echo(f"onnx {precision} written to {out} (verified; report: {out / 'moai_parity.json'})")


VERIFY_HELP = f"""Compare ARTIFACTS with a reference on the built-in probe set, each loaded as it serves;
print a table, write JSON, exit 3 if any fails its gate.

ARTIFACTS are specs ({kind_names()}) or bare directories, recognised by what they contain:

\b
{describe_recognised()}

Gates come from one table by kind and precision (moai_export/gates/table.py); each override
replaces only its own number. A configuration that passes is admitted: launchers and
Embedders refuse configurations no gate admitted (e.g. run this with --device cuda on the
GPU machine before serving bfloat16 there).

A deployment checks itself with --expected DIR instead of --reference: the running endpoint's
answers to the probes DIR recorded at export, within the endpoint's gate (no model needed).
"""


@main.command(help=VERIFY_HELP)
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--reference", default=None,
              help=f"BASE+ADAPTER (the PEFT reference), or any spec ({kind_names()}).")
@click.option("--expected", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Instead of --reference: check a running endpoint (openai-http://, triton-grpc://, "
                   "triton-http://) against the reference vectors this exported artifact (or Triton repository) "
                   "recorded, without the base model or the adapter; exit 3 naming the worst probes.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Load local artifacts on this device (onnx: its CUDA provider; vllm: the server on the GPU, "
                   "bfloat16). A passing run admits that configuration in the artifact's manifest.")
@click.option("--no-admit", is_flag=True, help="Do not record a passing configuration in the artifact's manifest.")
@click.option("--dims", type=click.IntRange(min=1), default=None,
              help="Compare Matryoshka-truncated vectors (first DIMS components, renormalized, 32..dims) on both "
                   "sides, as `dimensions` serves them. Admits nothing.")
@gate_options
@probe_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=Path("moai-verify.json"),
              show_default=True, help="Where to write the JSON report.")
def verify(artifacts, reference, expected, device, no_admit, dims, min_cosine, max_abs, min_rank_agreement, probes,
           json_path):
    from ..artifacts.directories import check_output_location
    from .verify import verify as run_verify

    if (reference is None) == (expected is None):
        raise click.UsageError("give --reference (gate artifacts against a reference) or --expected DIR (check a "
                               "running endpoint against the vectors DIR recorded), not both or neither")
    check_output_location(json_path, directory=False)  # now, not after minutes of verification
    if expected is not None:
        _verify_expected(artifacts, expected, overrides_from(min_cosine, max_abs, min_rank_agreement), json_path)
        return
    report, gates = run_verify(list(artifacts), reference, overrides=overrides_from(min_cosine, max_abs,
                                                                                    min_rank_agreement),
                               device=device, admit=not no_admit, log=_log, dims=dims, probes=probes)
    _report_gates(gates, report, json_path)


def _verify_expected(endpoints, expected, overrides, json_path):
    from .verify import verify_expected

    if len(endpoints) != 1:
        raise click.UsageError("--expected checks one endpoint at a time")
    report, gate = verify_expected(endpoints[0], expected, overrides=overrides, log=_log)
    _report_gates([gate], report, json_path, "worst probes: " + "; ".join(
        f"{p['id']} ({p['kind']}) cosine {p['cosine']:.6f}" for p in report["worst"]))


def _report_gates(gates, report: dict, json_path: Path, *notes: str) -> None:
    """The gate table, `notes`, every failure, the JSON report; exit 3 when a gate failed."""
    from ..artifacts.directories import write_json
    from ..export.exporter import format_gate_table

    click.echo(format_gate_table(gates))
    for note in notes:
        click.echo(note)
    for gate in gates:
        for reason in gate.reasons():
            click.echo(f"  FAIL {gate.parity.candidate}: {reason}")
    write_json(json_path, report)
    click.echo(f"report: {json_path}")
    if not report["passed"]:
        sys.exit(EXIT_VERIFICATION_FAILED)


@main.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo", type=click.Path(path_type=Path), default=Path("triton_models"), show_default=True,
              help="Model repository to write into (other models there are kept).")
@triton_option("--name", help="Ensemble name; the tokenizer and encoder models get _tokenizer / _encoder suffixes.")
@triton_option("--encoder", type=click.Choice(["python", "onnxruntime", "engine"]),
               help="python: onnxruntime inside the python backend (runs anywhere, incl. the local CPU server); "
                    "onnxruntime: Triton's ONNX Runtime backend (NVIDIA's container, GPU); "
                    "engine: ARTIFACT is a merged model, run by the packed engine in the python backend "
                    "(GPU with --engine-device cuda; no TensorRT or onnxruntime-gpu needed).")
@triton_option("--engine-device", type=click.Choice(["cpu", "cuda"]),
               help="engine encoder: KIND_CPU or KIND_GPU instances.")
@click.option("--engine-dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="engine encoder: compute dtype (default: bf16 on cuda, fp32 on cpu).")
@triton_option("--engine-max-batch-tokens", type=click.IntRange(min=16),
               help="engine encoder: real tokens per forward pass (Triton's batches are cut under it).")
@click.option("--engine-compile", is_flag=True, help="engine encoder: torch.compile (warm-up at model load).")
@click.option("--engine-env", default=None, metavar="DIR",
              help="engine encoder: the Python environment (venv or unpacked conda env) with torch and transformers "
                   "that Triton activates for the encoder (EXECUTION_ENV_PATH; the Triton runtime env has no torch). "
                   "Default: the environment running this command; name the serving machine's when the repository "
                   "moves there.")
@triton_option("--max-batch-size", type=click.IntRange(min=1))
@triton_option("--max-queue-delay-us", type=click.IntRange(min=0),
               help="Dynamic batching: how long a request may wait for others to join its batch.")
@triton_option("--preferred-batch-sizes",
               help="Dynamic batching: comma-separated preferred sizes (those above --max-batch-size are dropped; "
                    "default none: the batcher merges what is queued and the encoder cuts it by its token budget).")
@triton_option("--instances", type=click.IntRange(min=1), help="Encoder instances.")
@triton_option("--intra-op-threads", type=click.IntRange(min=0),
               help="python encoder: onnxruntime threads per instance (0: onnxruntime's default).")
@click.option("--tensorrt", is_flag=True, help="onnxruntime encoder: enable the TensorRT execution accelerator.")
@triton_option("--tensorrt-precision", type=click.Choice(["FP16", "FP32"]))
@triton_option("--version", "model_version", field="version", type=click.IntRange(min=1),
               help="Version folder to write (other versions of these models are kept).")
@click.option("--reference", default=None,
              help="Reference for the gate. Default: the root reference recorded in ARTIFACT's chain (the PEFT "
                   "reference its merge was gated against); never ARTIFACT alone.")
@click.option("--verify-with", default=None, metavar="URL",
              help="Verify on a running server that serves the written repository (grpc://HOST:PORT or "
                   "http://HOST:PORT, e.g. NVIDIA's container on a GPU) instead of a local tritonserver.")
@click.option("--no-verify", is_flag=True,
              help="Skip verification: the repository is written but not admitted, and the launcher refuses it "
                   "until `moai-export verify triton:REPO` (or --allow-unverified).")
@gate_options
@probe_options
@allow_unverified_option
@click.option("--force", is_flag=True, help="Replace these models' version folder if it exists.")
def triton(artifact, repo, name, encoder, engine_device, engine_dtype, engine_max_batch_tokens, engine_compile,
           engine_env, max_batch_size, max_queue_delay_us, preferred_batch_sizes, instances,
           intra_op_threads, tensorrt, tensorrt_precision, model_version, reference, verify_with, no_verify,
           min_cosine, max_abs, min_rank_agreement, probes, allow_unverified, force):
    """Write a Triton model repository for the ONNX ARTIFACT (a merged model with --encoder
    engine): a tokenizer model (query prompt,
    truncation, end token, padding server-side), an encoder model and an ensemble taking raw
    TEXT and KIND ("query" | "document", both required) and returning EMBEDDING and TOKENS.

    \b
    Serve it here:       serve/triton/run_local.sh triton_models
    Or on GPUs:          see serve/triton/README.md (NVIDIA's container)
    Check it:            moai-export verify triton-grpc://127.0.0.1:8001/moai_embedding --reference BASE+ADAPTER
    """
    from ..export.triton import TritonOptions, write_repository

    try:
        preferred = tuple(int(x) for x in preferred_batch_sizes.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"not a list of integers: {preferred_batch_sizes!r}", param_hint="--preferred-batch-sizes")
    if no_verify and verify_with:
        raise click.UsageError("--no-verify and --verify-with exclude each other")
    options = TritonOptions(name=name, encoder=encoder, max_batch_size=max_batch_size,
                            max_queue_delay_us=max_queue_delay_us, preferred_batch_sizes=preferred,
                            instances=instances, intra_op_threads=intra_op_threads, tensorrt=tensorrt,
                            tensorrt_precision=tensorrt_precision, version=model_version, force=force,
                            verify="none" if no_verify else (verify_with or "local"),
                            overrides=overrides_from(min_cosine, max_abs, min_rank_agreement), probes=probes,
                            engine_device=engine_device, engine_dtype=engine_dtype,
                            engine_max_batch_tokens=engine_max_batch_tokens, engine_compile=engine_compile,
                            engine_env=engine_env, allow_unverified=allow_unverified)
    write_repository(artifact, repo, options, log=_log, reference=_reference(reference), reference_label=reference)
    click.echo(f"wrote {name}, {name}_tokenizer, {name}_encoder to {repo}")


@main.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create.")
@vllm_option("--dtype", type=DTYPE_CHOICE, help="dtype of the saved weights.")
@vllm_option("--served-model-name", help="The model name clients send (written into the serve arguments).")
@click.option("--reference", default=None,
              help="Reference for the gate, e.g. BASE+ADAPTER. Default: the root reference recorded in SOURCE's "
                   "chain (the PEFT reference its merge was gated against).")
@gate_options
@probe_options
@allow_unverified_option
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def vllm(source, out, dtype, served_model_name, reference, min_cosine, max_abs, min_rank_agreement, probes,
         allow_unverified, force):
    """Write a directory that vLLM serves as an embedding model, with the pooler pinned.

    SOURCE is a merged (or any sentence-transformers) model directory. OUT gets the weights,
    tokenizer.json with the end-token post-processor, the sentence-transformers modules
    (vLLM takes its pooler and its query/document prompts from them), the contract and
    vllm_serve.json (--runner pooling, --pooler-config, dtype, max model len). It is published
    only after a real vLLM server, started from OUT as serve/vllm/run.sh starts it on this machine
    (float32 on CPU), passes the parity gate with its own prompts and truncation. On a GPU
    machine, admit bfloat16 there before serving: moai-export verify OUT --device cuda --reference ...

    \b
    Serve it:   serve/vllm/run.sh OUT              (127.0.0.1:8000)
    Check it:   moai-export verify vllm-http://127.0.0.1:8000/moai-embedding --reference BASE+ADAPTER
    """
    from ..export.vllm import VllmOptions, export_vllm

    options = VllmOptions(dtype=dtype, served_model_name=served_model_name, force=force, log=_log,
                          overrides=overrides_from(min_cosine, max_abs, min_rank_agreement), probes=probes,
                          allow_unverified=allow_unverified)
    export_vllm(source, out, reference=_reference(reference), reference_label=reference, options=options)
    click.echo(f"vLLM directory written to {out} (verified; serve: serve/vllm/run.sh {out})")


@main.command()
@click.option("--base", required=True, help="Base model: sentence-transformers directory or hub id.")
@click.option("--train", "train_file", type=click.Path(path_type=Path), required=True,
              help="Training pairs: JSON lines or .parquet with query, positive and optional negative.")
@click.option("--eval", "eval_dir", type=click.Path(path_type=Path), default=None,
              help="Validation: a BEIR directory (corpus.jsonl, queries.jsonl, qrels.tsv), as moai-bench retrieval reads.")
@click.option("--eval-split", type=float, default=None, help="Validation: hold out this fraction of the training queries.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Run directory: adapter/, checkpoints/, training_report.json, training_curves.png, model_card.md.")
@train_option("--lora-r", type=click.IntRange(min=1))
@train_option("--lora-alpha", type=click.IntRange(min=1))
@train_option("--lora-dropout", type=click.FloatRange(0, 1))
@train_option("--lora-targets", help="Comma-separated module names.")
@train_option("--batch-size", type=click.IntRange(min=2),
              help="Per device: each query's in-batch negatives are the other documents of the global batch.")
@train_option("--mini-batch-size", type=click.IntRange(min=1),
              help="Cached loss: texts through the model at once (bounds memory, not the negatives).")
@train_option("--lr", field="learning_rate", type=float, callback=lambda ctx, param, value: _learning_rate(value))
@train_option("--scheduler", help="transformers' lr_scheduler_type.")
@train_option("--warmup-ratio", type=click.FloatRange(0, 1))
@train_option("--weight-decay", type=float)
@train_option("--epochs", type=click.FloatRange(min=0, min_open=True))
@train_option("--max-steps", type=int, help="> 0: stop after this many steps.")
@train_option("--eval-steps", type=click.FloatRange(min=0, min_open=True),
              help="Evaluate and save every this many steps (< 1: a fraction of the whole run).")
@train_option("--early-stopping-patience", type=click.IntRange(min=0),
              help="Stop after this many evaluations without a better NDCG@10 (0: never).")
@train_option("--bf16/--no-bf16", help="bfloat16 mixed precision.")
@train_option("--gradient-checkpointing/--no-gradient-checkpointing")
@click.option("--max-tokens", type=click.IntRange(min=2), default=None, help="Default: the base's contract (1024).")
@train_option("--seed", type=int)
@train_option("--report-to", type=click.Choice(["none", "tensorboard", "wandb"]))
@click.option("--resume", is_flag=True, help="Continue OUT's run from its last complete checkpoint.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def train(base, train_file, eval_dir, eval_split, out, lora_r, lora_alpha, lora_dropout, lora_targets, batch_size,
          mini_batch_size, lr, scheduler, warmup_ratio, weight_decay, epochs, max_steps, eval_steps,
          early_stopping_patience, bf16, gradient_checkpointing, max_tokens, seed, report_to, resume, force):
    """Train a LoRA adapter on BASE with MoAI's recipe (every default is the recipe's) and keep
    the checkpoint with the best validation NDCG@10 (queries carry the contract's query prompt).

    \b
    One GPU:    moai-export train --base Qwen/Qwen3-Embedding-0.6B --train pairs.jsonl --eval BEIR_DIR --out run
    6 GPUs:     torchrun --nproc-per-node 6 -m moai_export.train --base ... --out run   (DDP; rank 0 writes)
    Continue:   the same command with --resume (after Ctrl-C the last complete checkpoint is kept)
    Then:       moai-export merge --base BASE --adapter run/adapter --out merged
    """
    from ..train import TrainOptions
    from ..train import train as run_training

    if eval_dir is None and eval_split is None:
        raise click.UsageError("give --eval BEIR_DIR or --eval-split FRACTION (the best checkpoint is chosen on it)")
    if eval_dir is not None and eval_split is not None:
        raise click.UsageError("give --eval or --eval-split, not both")
    options = TrainOptions(
        base=base, train=train_file, out=out, eval_dir=eval_dir, eval_split=eval_split, lora_r=lora_r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()), batch_size=batch_size,
        mini_batch_size=mini_batch_size, learning_rate=lr, scheduler=scheduler, warmup_ratio=warmup_ratio,
        weight_decay=weight_decay, epochs=epochs, max_steps=max_steps, eval_steps=eval_steps,
        early_stopping_patience=early_stopping_patience, bf16=bf16, gradient_checkpointing=gradient_checkpointing,
        max_tokens=max_tokens, seed=seed, report_to=report_to, resume=resume, force=force)
    try:
        run_training(options, log=_log)
    except KeyboardInterrupt:
        click.secho(f"interrupted: the last complete checkpoint under {out / 'checkpoints'} is kept; "
                    "continue with --resume", fg="yellow", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _learning_rate(value: float) -> float:
    """--lr as the library checks it, refused as a command-line mistake (exit 2) before any work."""
    from ..train.options import learning_rate_problem

    problem = learning_rate_problem(value)
    if problem:
        raise click.BadParameter(f"{value:g}: {problem}")
    return value


UVICORN_STARTUP_FAILURE = 3  # uvicorn.main.STARTUP_FAILURE


def _log(message: str) -> None:
    click.echo(message, err=True)


def _reference(spec: str | None):
    """The --reference Embedder, or None (the exporter then uses its source in float32 torch)."""
    if not spec:
        return None
    from ..embedders import load_embedder

    return load_embedder(spec, name=f"reference ({spec})")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("build/demo"), show_default=True,
              help="Working directory for every stage's artifact.")
@demo_option("--size", type=click.Choice(["tiny", "small", "full"]), help="Size of the example model.")
@click.option("--force", is_flag=True, help="Replace artifacts left by an earlier run.")
def demo(out: Path, size: str, force: bool) -> None:
    """Run the whole pipeline on the built-in example and print one table of parity and
    speed per variant (example -> merge -> every variant vs the PEFT reference)."""
    from .demo import run_demo

    click.echo(run_demo(out, size=size, force=force, log=lambda m: click.echo(m, err=True)))


@main.command()
@click.option("--triton", "triton_url", default=None, metavar="grpc://HOST:PORT",
              help="Triton's gRPC endpoint serving the ensemble written by `moai-export triton` (or --vllm); "
                   "several replicas as one gRPC target: dns:///HOST:PORT (every address the name resolves to) "
                   "or ipv4:IP:PORT,IP:PORT. Calls are balanced round-robin; a failed call is tried again on "
                   "another replica.")
@click.option("--vllm", "vllm_url", default=None, metavar="http://HOST:PORT",
              help="A vLLM server of a `moai-export vllm` directory (serve/vllm/run.sh), instead of --triton.")
@click.option("--vllm-artifact", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="With --vllm: the directory `moai-export vllm` wrote (the contract and tokenizer come from it).")
@click.option("--model", default=None,
              help="The ensemble's name in Triton (e.g. moai_embedding); with --vllm the served model "
                   "(default: the artifact's served_model_name).")
@click.option("--served-model-name", default=None, help="The name clients send as `model` (default: --model).")
@gateway_option("--host")
@gateway_option("--port", type=click.IntRange(1, 65535))
@click.option("--api-key", "api_keys", multiple=True, metavar="KEY",
              help="Accept this Bearer key (repeatable). Also read from $MOAI_GATEWAY_API_KEYS (comma-separated) "
                   "and --api-key-file. A source given without a key is an error. No key anywhere: open, "
                   "on a loopback --host only (else --no-auth).")
@click.option("--api-key-file", type=click.Path(path_type=Path), default=None,
              help="File of accepted keys, one a line (# comments).")
@click.option("--no-auth", is_flag=True,
              help="Serve without API keys on an address other machines can reach (say it: never by accident).")
@gateway_option("--max-texts", type=click.IntRange(min=1), help="Texts per request (400 above).")
@gateway_option("--max-chars", type=click.IntRange(min=1), help="Characters per text (400 above).")
@gateway_option("--max-body-bytes", type=click.IntRange(min=1), help="Request body size (413 above).")
@gateway_option("--max-header-bytes", type=click.IntRange(min=1), help="Request line and headers (431 above).")
@gateway_option("--max-headers", type=click.IntRange(min=1), help="Headers per request (431 above).")
@gateway_option("--header-timeout", type=click.FloatRange(min=0.1),
                help="Seconds for a request's line and headers to arrive (408 after; an idle new connection "
                     "is closed).")
@gateway_option("--body-timeout", type=click.FloatRange(min=0.1),
                help="Seconds for a request's body to arrive after its headers (408 after).")
@gateway_option("--max-in-flight", type=click.IntRange(min=1),
                help="Requests sent to Triton at once; more wait in a queue.")
@gateway_option("--max-queue", type=click.IntRange(min=0),
                help="Waiting requests beyond --max-in-flight; more are refused with 429 and Retry-After.")
@gateway_option("--timeout", field="upstream_timeout", type=click.FloatRange(min=0.1),
                help="Seconds for one Triton call (and the longest wait in the queue); then 503.")
@gateway_option("--drain-timeout", type=click.FloatRange(min=0),
                help="On SIGTERM, SIGHUP or Ctrl-C: seconds the requests in flight may take to finish.")
@gateway_option("--truncate", type=click.BOOL,
                help="A text over the model's max tokens: cut (the end token kept last) and listed in "
                     "usage.truncated_inputs and the X-Moai-Truncated-Inputs header (true), or refused with "
                     "a 400 naming it (false).")
@click.option("--default-input-type", type=click.Choice(KINDS), default=None,
              help="The kind of a request that names none (no input_type, no NAME:query / NAME:document "
                   "model). Without it such a request is refused with 400: stock OpenAI, LangChain and "
                   "LlamaIndex clients send no kind, and a query embedded as a document loses its instruction.")
@library_option(".gateway.server:serve", "--log-level",
                type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def gateway(triton_url, vllm_url, vllm_artifact, model, served_model_name, host, port, api_keys, api_key_file,
            no_auth, max_texts, max_chars, max_body_bytes, max_header_bytes, max_headers, header_timeout,
            body_timeout, max_in_flight, max_queue, timeout, drain_timeout, truncate, default_input_type, log_level):
    """Serve OpenAI's embeddings API in front of a Triton ensemble or a vLLM server: POST
    /v1/embeddings (input, model, encoding_format float|base64, dimensions, user, input_type
    query|document), GET /v1/models, /health (ready only when the backend is) and /metrics
    (Prometheus).

    \b
      moai-export gateway --triton grpc://127.0.0.1:8001 --model moai_embedding
      moai-export gateway --vllm http://127.0.0.1:8000 --vllm-artifact build/vllm
      curl -s localhost:8080/v1/embeddings -H 'Content-Type: application/json' \\
          -d '{"model": "moai_embedding", "input": ["a question"], "input_type": "query"}'

    Each request chooses its kind: input_type, or the model moai_embedding:query /
    moai_embedding:document (for clients that cannot add a field); else 400, unless
    --default-input-type chooses one for the whole deployment.

    Every error is OpenAI's error JSON; the backend down gives 503 with Retry-After. In front of
    Triton the gateway needs no model files: the contract comes from the ensemble's config, usage
    tokens from its TOKENS output (repositories written before TOKENS and UNTRUNCATED_TOKENS
    existed: re-run `moai-export triton`). In front of vLLM it reads the contract and tokenizer
    from the artifact directory, applies the query prompt and sends token ids (vLLM's own /v1
    ignores input_type); usage is vLLM's count. Over-length texts are reported (usage, header)
    or refused (--truncate false), never silent.
    SIGTERM, SIGHUP, Ctrl-C: finish the requests in flight (--drain-timeout), exit 143, 129, 130.
    """
    from ..gateway.config import GatewayConfig, load_api_keys, parse_triton_url
    from ..gateway.server import serve
    from ..launchers.process import port_taken

    config = GatewayConfig(parse_triton_url(triton_url) if triton_url else None, model,
                           served_model_name=served_model_name, vllm=vllm_url, vllm_artifact=vllm_artifact,
                           truncate=truncate, host=host, port=port, api_keys=load_api_keys(api_keys, api_key_file),
                           max_texts=max_texts, max_chars=max_chars, max_body_bytes=max_body_bytes,
                           max_header_bytes=max_header_bytes, max_headers=max_headers, header_timeout=header_timeout,
                           body_timeout=body_timeout, max_in_flight=max_in_flight, max_queue=max_queue,
                           upstream_timeout=timeout, drain_timeout=drain_timeout, no_auth=no_auth,
                           default_input_type=default_input_type).validate()
    upstream = (f"Triton {config.triton} ({config.model})" if config.backend == "triton"
                else f"vLLM {config.vllm} ({config.model}, contract from {config.vllm_artifact})")
    _log(f"gateway: http://{host}:{port}/v1/embeddings -> {upstream} "
         f"({'API keys: ' + str(len(config.api_keys)) if config.api_keys else 'no API key: open'}; "
         f"over-length texts {'truncated and reported' if config.truncate else 'refused'})")
    _log(f"gateway: input_type: {config.kind_rule()}")
    if port_taken(host, port):
        raise MoaiError(f"cannot listen on {host}:{port}: the port is already in use (another server?)")
    try:
        stopped_by = serve(config, log_level=log_level)
    except SystemExit as exc:
        # uvicorn exits 3 when the server did not start (e.g. a port taken since the check above);
        # 3 means "verification failed" here
        if exc.code == UVICORN_STARTUP_FAILURE:
            raise MoaiError(f"the gateway did not start on {host}:{port} (see uvicorn's message above)") from None
        raise
    if stopped_by:
        click.get_current_context().exit(128 + stopped_by)


@main.command()
@click.argument("artifact")
@click.argument("corpus", nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory of the Parquet shards, their manifest and report (a rerun resumes it).")
@click.option("--reference", default=None,
              help="Gate against this reference spec (e.g. BASE+ADAPTER), embedded now, instead of the probe "
                   "vectors recorded beside the artifact at export.")
@corpus_option("--id-column", help="The id column (BEIR corpus.jsonl: _id).")
@corpus_option("--text-column", help="The text column.")
@corpus_option("--format", type=click.Choice(["auto", "jsonl", "parquet"]), help="auto: by file suffix.")
@click.option("--dims", type=click.IntRange(min=1), default=None,
              help="Matryoshka: keep the first DIMS components, renormalized.")
@click.option("--float16", is_flag=True, help="Store the vectors as float16 (default float32).")
@embed_option("--workers", type=click.IntRange(min=1), help="Embedding actors, one Embedder each.")
@embed_option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True))
@embed_option("--gpus-per-worker", type=click.FloatRange(min=0))
@click.option("--ray-address", default=None, metavar="auto|ray://HOST:PORT",
              help="Join a running Ray cluster (default: a local Ray started for the job).")
@embed_option("--shard-rows", type=click.IntRange(min=1),
              help="Rows per output shard, at least 4 shards a worker (the count is fixed by the first run).")
@click.option("--incremental", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              metavar="PREVIOUS_OUT", help="An earlier output of this artifact: rows whose id and text are "
                                           "unchanged reuse its vectors; only new or changed texts are embedded.")
@embed_option("--progress/--no-progress",
              help="A progress bar of rows, docs/s and ETA (moves as each shard is written).")
@gate_options
def embed(artifact, corpus, out, reference, id_column, text_column, format, dims, float16, workers, cpus_per_worker,
          gpus_per_worker, ray_address, shard_rows, incremental, progress, min_cosine, max_abs, min_rank_agreement):
    """Embed a CORPUS (a BEIR directory or corpus.jsonl, JSON lines or Parquet files, globs, local
    or s3:// / gs:// URIs) with
    ARTIFACT (onnx:DIR, torch:DIR, engine:DIR) on Ray Data into Parquet shards of id, embedding,
    tokens, text_hash.

    The artifact's configuration must be admitted where each worker runs, and every worker is gated
    on the probe set against the reference vectors recorded at export (or --reference) before it
    writes: on failure nothing is written (exit 3). Shards are named from a hash of the ids and
    written atomically as each is done: a rerun into OUT embeds only the missing shards, so every
    id ends up exactly once; a rerun by another artifact is refused.
    """
    from ..embed_job.corpus import CorpusOptions
    from ..embed_job.job import EmbedOptions, run_embed

    options = EmbedOptions(reference=reference, corpus=CorpusOptions(id_column, text_column, format), dims=dims,
                           float16=float16, workers=workers, cpus_per_worker=cpus_per_worker,
                           gpus_per_worker=gpus_per_worker, ray_address=ray_address, shard_rows=shard_rows,
                           incremental=incremental, progress=progress,
                           overrides=overrides_from(min_cosine, max_abs, min_rank_agreement), log=_log)
    report = run_embed(artifact, list(corpus), out, options)
    reused = f", {report['rows_reused']} reused from {incremental}" if incremental else ""
    click.echo(f"{report['rows_total']} vectors in {out} ({report['shards_written']} shards written, "
               f"{report['shards_skipped']} already complete{reused}; report: {out / 'embed_report.json'})")


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--max-tokens", type=click.IntRange(min=2), default=None, help="Override the maximum sequence length.")
def contract(model_dir: Path, max_tokens: int | None) -> None:
    """Print the embedding contract of MODEL_DIR (pooling, prompts, end token, ...) as JSON."""
    import json

    from ..model_files.model_contract import read_contract

    click.echo(json.dumps(read_contract(model_dir, max_tokens=max_tokens).to_dict(), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
