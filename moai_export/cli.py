"""`moai-export`: thin click commands over the library; no logic of their own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import MoaiError, VerificationFailed

DTYPE_CHOICE = click.Choice(["fp32", "bf16", "fp16"])


class MoaiGroup(click.Group):
    """Turns MoaiError into a one-line message and exit code 1 (2 for a failed parity gate);
    Ctrl-C into exit code 130."""

    interrupted_message = "interrupted: nothing was written"

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VerificationFailed as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(2)
        except MoaiError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.secho(self.interrupted_message, fg="yellow", err=True)
            ctx.exit(130)


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
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create (base/ and adapter/).")
@click.option("--size", type=click.Choice(["tiny", "small", "full"]), default="tiny", show_default=True,
              help="tiny/small for tests and demos; full = the real Qwen3-Embedding-0.6B shape (28 layers, 1024 hidden).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds weights, data order and dropout.")
@click.option("--steps", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA training steps.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def example(out: Path, size: str, seed: int, steps: int, force: bool) -> None:
    """Build the offline example: a random-weight Qwen3 embedding base (MoAI's tokenizer,
    prompts and pooling) and a LoRA adapter trained on it with MoAI's recipe."""
    from .example import build_example

    summary = build_example(out, size=size, seed=seed, steps=steps, force=force)
    click.echo(f"example ({size}) written to {out}: base/ and adapter/; "
               f"training loss {summary['losses'][0]:.3f} -> {summary['losses'][-1]:.3f}")


@main.command()
@click.option("--base", required=True, help="Base model: local directory or hub id (e.g. Qwen/Qwen3-Embedding-0.6B).")
@click.option("--adapter", required=True, help="LoRA adapter: local directory or hub id.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create.")
@click.option("--dtype", type=DTYPE_CHOICE, default="fp32", show_default=True, help="dtype of the saved weights.")
@click.option("--max-tokens", type=click.IntRange(min=2), default=None,
              help="Override the maximum sequence length (default: from the model's sentence-transformers files).")
@click.option("--min-cosine", type=float, default=None,
              help="Gate: minimum cosine to the reference per probe (default by dtype: fp32 0.99999, fp16 0.999, bf16 0.99).")
@click.option("--max-abs", type=float, default=None,
              help="Gate: maximum absolute difference per component (default: fp32 1e-5; not gated for bf16/fp16).")
@click.option("--allow-base-mismatch", is_flag=True, help="Merge even if the adapter records a different base hub id.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
              help="Also write the JSON report here (written even when verification fails).")
def merge(base, adapter, out, dtype, max_tokens, min_cosine, max_abs, allow_base_mismatch, force, report_path):
    """Merge ADAPTER into BASE and write a standalone sentence-transformers model to OUT.

    The output is published only after it passes verification against the float32 PEFT
    reference (see moai_parity.json inside it); on failure nothing is left behind and the
    exit code is 2.
    """
    import json

    from .merge import MergeOptions
    from .merge import merge as run_merge
    from .parity import MERGE_THRESHOLDS

    thresholds = _thresholds(MERGE_THRESHOLDS[dtype], min_cosine, max_abs)
    options = MergeOptions(dtype=dtype, max_tokens=max_tokens, thresholds=thresholds, force=force,
                           allow_base_mismatch=allow_base_mismatch, log=_log)
    try:
        report = run_merge(base, adapter, out, options)
    except VerificationFailed as exc:
        if report_path and exc.report:
            report_path.write_text(json.dumps(exc.report, indent=2, ensure_ascii=False) + "\n")
        raise
    if report_path:
        report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    click.echo(f"merged model written to {out} (verified; report: {out / 'moai_parity.json'})")


@main.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="fp32; fp16 (traced from a half-precision model); int8 (dynamic per-channel quantization).")
@click.option("--int8-method", type=click.Choice(["dynamic", "weight-only"]), default="dynamic", show_default=True,
              help="int8 only: dynamic (int8 weights and activations, fastest on CPU) or weight-only "
                   "(int8 weight blocks; more accurate on models with outlier activations).")
@click.option("--reference", default=None,
              help="Reference for the gate, e.g. BASE+ADAPTER (the PEFT reference). Default: SOURCE in float32 torch.")
@click.option("--opset", type=click.IntRange(min=14), default=18, show_default=True, help="ONNX opset.")
@click.option("--min-cosine", type=float, default=None, help="Gate: minimum cosine (default fp32 0.99999, fp16 0.999, int8 0.99).")
@click.option("--max-abs", type=float, default=None, help="Gate: maximum absolute difference (default fp32 1e-4; not gated otherwise).")
@click.option("--min-rank-agreement", type=float, default=None,
              help="Gate: top-10 overlap on the retrieval probe (default fp32 1.0, fp16 0.95, int8 0.8).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def onnx(source, out, precision, int8_method, reference, opset, min_cosine, max_abs, min_rank_agreement, force):
    """Export the merged model SOURCE to ONNX with pooling and normalization in the graph.

    The artifact takes int64 input_ids and attention_mask and returns sentence_embedding
    [batch, dims] float32. It is published only if it passes the parity gate against the
    reference; otherwise nothing is written and the exit code is 2.
    """
    from .export.onnx import ONNX_THRESHOLDS, OnnxOptions, export_onnx

    options = OnnxOptions(precision=precision, int8_method=int8_method, opset=opset,
                          thresholds=_thresholds(ONNX_THRESHOLDS[precision], min_cosine, max_abs),
                          min_rank_agreement=min_rank_agreement, force=force, log=_log)
    export_onnx(source, out, reference=_reference(reference), reference_label=reference, options=options)
    click.echo(f"onnx {precision} written to {out} (verified; report: {out / 'moai_parity.json'})")


@main.command()
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--reference", required=True,
              help="BASE+ADAPTER (PEFT reference), or a spec: torch:DIR, st:DIR, onnx:DIR, DIR.")
@click.option("--min-cosine", type=float, default=None, help="Gate override (default: by the artifact's precision).")
@click.option("--max-abs", type=float, default=None, help="Gate override (default: by the artifact's precision).")
@click.option("--min-rank-agreement", type=float, default=None, help="Gate override for top-10 overlap.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=Path("moai-verify.json"),
              show_default=True, help="Where to write the JSON report.")
def verify(artifacts, reference, min_cosine, max_abs, min_rank_agreement, json_path):
    """Compare ARTIFACTS (merged dirs, ONNX dirs, or specs like onnx:DIR) with a reference on
    the built-in probe set; print a table, write JSON, exit 2 if any fails its gate."""
    import json

    from .export.gate import format_gate_table
    from .verify import verify as run_verify

    thresholds = None
    if min_cosine is not None or max_abs is not None:
        from .parity import Thresholds

        thresholds = Thresholds(min_cosine=1.0 if min_cosine is None else min_cosine, max_abs=max_abs)
    report, gates = run_verify(list(artifacts), reference, thresholds=thresholds,
                               min_rank_agreement=min_rank_agreement, log=_log)
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    click.echo(format_gate_table(gates))
    for gate in gates:
        for reason in gate.reasons():
            click.echo(f"  FAIL {gate.parity.candidate}: {reason}")
    click.echo(f"report: {json_path}")
    if not report["passed"]:
        sys.exit(2)


@main.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo", type=click.Path(path_type=Path), default=Path("triton_models"), show_default=True,
              help="Model repository to write into (other models there are kept).")
@click.option("--name", default="moai_embedding", show_default=True,
              help="Ensemble name; the tokenizer and encoder models get _tokenizer / _encoder suffixes.")
@click.option("--encoder", type=click.Choice(["python", "onnxruntime"]), default="python", show_default=True,
              help="python: onnxruntime inside the python backend (runs anywhere, incl. the local CPU server); "
                   "onnxruntime: Triton's ONNX Runtime backend (NVIDIA's container, GPU).")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Dynamic batching: how long a request may wait for others to join its batch.")
@click.option("--preferred-batch-sizes", default="8,16,32", show_default=True,
              help="Dynamic batching: comma-separated preferred sizes (those above --max-batch-size are dropped).")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Encoder instances.")
@click.option("--intra-op-threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="python encoder: onnxruntime threads per instance (0: onnxruntime's default).")
@click.option("--tensorrt", is_flag=True, help="onnxruntime encoder: enable the TensorRT execution accelerator.")
@click.option("--tensorrt-precision", type=click.Choice(["FP16", "FP32"]), default="FP16", show_default=True)
@click.option("--version", "model_version", type=click.IntRange(min=1), default=1, show_default=True,
              help="Version folder to write.")
@click.option("--force", is_flag=True, help="Replace these three models if they exist.")
def triton(artifact, repo, name, encoder, max_batch_size, max_queue_delay_us, preferred_batch_sizes, instances,
           intra_op_threads, tensorrt, tensorrt_precision, model_version, force):
    """Write a Triton model repository for the ONNX ARTIFACT: a tokenizer model (query prompt,
    truncation, end token, padding server-side), an encoder model and an ensemble taking raw
    TEXT and optional KIND ("query" | "document") and returning EMBEDDING.

    \b
    Serve it here:       serve/triton/run_local.sh triton_models
    Or on GPUs:          see serve/triton/README.md (NVIDIA's container)
    Check it:            moai-export verify triton-grpc://127.0.0.1:8001/moai_embedding --reference BASE+ADAPTER
    """
    from .export.triton import TritonOptions, write_repository

    try:
        preferred = tuple(int(x) for x in preferred_batch_sizes.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"not a list of integers: {preferred_batch_sizes!r}", param_hint="--preferred-batch-sizes")
    options = TritonOptions(name=name, encoder=encoder, max_batch_size=max_batch_size,
                            max_queue_delay_us=max_queue_delay_us, preferred_batch_sizes=preferred,
                            instances=instances, intra_op_threads=intra_op_threads, tensorrt=tensorrt,
                            tensorrt_precision=tensorrt_precision, version=model_version, force=force)
    write_repository(artifact, repo, options, log=_log)
    click.echo(f"wrote {name}, {name}_tokenizer, {name}_encoder to {repo}")


@main.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to create.")
@click.option("--dtype", type=DTYPE_CHOICE, default="fp32", show_default=True, help="dtype of the saved weights.")
@click.option("--served-model-name", default="moai-embedding", show_default=True,
              help="The model name clients send (written into the serve arguments).")
@click.option("--reference", default=None,
              help="Reference for the gate, e.g. BASE+ADAPTER. Default: SOURCE in float32 torch.")
@click.option("--min-cosine", type=float, default=None, help="Gate: minimum cosine (default by dtype, as for merge).")
@click.option("--max-abs", type=float, default=None, help="Gate: maximum absolute difference (default by dtype).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def vllm(source, out, dtype, served_model_name, reference, min_cosine, max_abs, force):
    """Write a directory that vLLM serves as an embedding model, with the pooler pinned.

    SOURCE is a merged (or any sentence-transformers) model directory. OUT gets the weights,
    tokenizer.json with the end-token post-processor, the sentence-transformers modules
    (vLLM takes its pooler and its query/document prompts from them), the contract and
    vllm_serve.json (--runner pooling, --pooler-config, dtype, max model len). It is published
    only after a real vLLM engine (offline, float32 on CPU) passes the parity gate.

    \b
    Serve it:   serve/vllm/run.sh OUT              (127.0.0.1:8000)
    Check it:   moai-export verify vllm-http://127.0.0.1:8000/moai-embedding --reference BASE+ADAPTER
    """
    from .export.vllm import VllmOptions, export_vllm
    from .parity import MERGE_THRESHOLDS

    options = VllmOptions(dtype=dtype, served_model_name=served_model_name, force=force, log=_log,
                          thresholds=_thresholds(MERGE_THRESHOLDS[dtype], min_cosine, max_abs))
    export_vllm(source, out, reference=_reference(reference), reference_label=reference, options=options)
    click.echo(f"vLLM directory written to {out} (verified; serve: serve/vllm/run.sh {out})")


def _log(message: str) -> None:
    click.echo(message, err=True)


def _reference(spec: str | None):
    """The --reference Embedder, or None (the exporter then uses its source in float32 torch)."""
    if not spec:
        return None
    from .embedders import load_embedder

    return load_embedder(spec, name=f"reference ({spec})")


def _thresholds(default, min_cosine, max_abs):
    """The default gate with the user's overrides."""
    from .parity import Thresholds

    return Thresholds(min_cosine=default.min_cosine if min_cosine is None else min_cosine,
                      max_abs=default.max_abs if max_abs is None else max_abs)


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("build/demo"), show_default=True,
              help="Working directory for every stage's artifact.")
@click.option("--size", type=click.Choice(["tiny", "small", "full"]), default="tiny", show_default=True,
              help="Size of the example model.")
@click.option("--force", is_flag=True, help="Replace artifacts left by an earlier run.")
def demo(out: Path, size: str, force: bool) -> None:
    """Run the whole pipeline on the built-in example and print one table of parity and
    speed per variant (example -> merge -> every variant vs the PEFT reference)."""
    from .demo import run_demo

    click.echo(run_demo(out, size=size, force=force, log=lambda m: click.echo(m, err=True)))


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--max-tokens", type=click.IntRange(min=2), default=None, help="Override the maximum sequence length.")
def contract(model_dir: Path, max_tokens: int | None) -> None:
    """Print the embedding contract of MODEL_DIR (pooling, prompts, end token, ...) as JSON."""
    import json

    from .contract import read_contract

    click.echo(json.dumps(read_contract(model_dir, max_tokens=max_tokens).to_dict(), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
