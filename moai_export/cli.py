"""`moai-export`: thin click commands over the library; no logic of their own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import MoaiError

DTYPE_CHOICE = click.Choice(["fp32", "bf16", "fp16"])


class MoaiGroup(click.Group):
    """Turns MoaiError into a one-line message and exit code 1; Ctrl-C into exit code 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MoaiError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.secho("interrupted: nothing was written", fg="yellow", err=True)
            ctx.exit(130)


@click.group(cls=MoaiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="moai-export")
def main() -> None:
    """Turn a LoRA adapter on Qwen3-Embedding into production artifacts, each one proven
    to embed like the float32 PEFT reference before it is written.

    \b
    Typical flow:
      moai-export example --out build/example
      moai-export merge --base build/example/base --adapter build/example/adapter --out build/merged
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

    from .errors import VerificationFailed
    from .merge import MergeOptions
    from .merge import merge as run_merge
    from .parity import MERGE_THRESHOLDS, Thresholds

    default = MERGE_THRESHOLDS[dtype]
    thresholds = Thresholds(
        min_cosine=default.min_cosine if min_cosine is None else min_cosine,
        max_abs=default.max_abs if max_abs is None else max_abs,
    )
    def log(message: str) -> None:
        click.echo(message, err=True)

    options = MergeOptions(dtype=dtype, max_tokens=max_tokens, thresholds=thresholds, force=force,
                           allow_base_mismatch=allow_base_mismatch, log=log)
    try:
        report = run_merge(base, adapter, out, options)
    except VerificationFailed as exc:
        if report_path and exc.report:
            report_path.write_text(json.dumps(exc.report, indent=2, ensure_ascii=False) + "\n")
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    if report_path:
        report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    click.echo(f"merged model written to {out} (verified; report: {out / 'moai_parity.json'})")


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
