"""The registry of variant kinds, and the only list of them.

A kind owns every fact about itself: how a spec names it, which files a directory of it holds
(and whether a bare directory is recognised by them), the command that writes it, which
Embedder serves it, its gate family, the runtime word its admissions are recorded under, and
the options its specs take, typed. The CLI, `verify`, `moai-bench`, the demo, help texts and
error messages all read this registry, so adding a kind is its Embedder module (a factory
`from_spec(location, *, name, **options)`) plus one `Kind` entry (or `register(kind)`).

Specs: `KIND:LOCATION[?key=value&...]`, `SCHEME://HOST:PORT/MODEL[?...]`, `BASE+ADAPTER`, or a
bare directory (recognised in registry order). Option values are parsed by the type the kind
declares (`?intra_op_threads=2`; booleans take true/false/1/0/yes/no/on/off); an unknown option
or a value of the wrong type is an error naming the option.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from ..core.errors import MoaiError

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class Option:
    """One `?name=value` a kind's specs take, and its type (bool, int, float or str)."""

    name: str
    type: type = str

    def parse(self, text: str, kind: str):
        word = text.strip().lower()
        if self.type is bool:
            if word in _TRUE or word in _FALSE:
                return word in _TRUE
            raise MoaiError(f"option {self.name!r} of {kind} targets is a boolean: "
                            f"{'/'.join(_TRUE)} or {'/'.join(_FALSE)}, not {text!r}")
        if self.type in (int, float):
            try:
                return self.type(text)
            except ValueError:
                raise MoaiError(f"option {self.name!r} of {kind} targets takes a number "
                                f"({self.type.__name__}), not {text!r}") from None
        return text


# Every kind takes `dims` (Matryoshka); every kind that loads an artifact of this machine checks
# its admission and so takes `allow_unverified`.
_DIMS = Option("dims", int)
_ALLOW_UNVERIFIED = Option("allow_unverified", bool)
_DEVICE = Option("device")
_DTYPE = Option("dtype")
# the token budget the in-process variants batch under (core.batching.serving_budget)
_BATCHING = (Option("max_batch_tokens", int), Option("max_batch_size", int))


@dataclass(frozen=True)
class Kind:
    name: str
    summary: str
    factory: str  # "module:function", imported only when used (torch, onnxruntime stay unloaded)
    family: str  # gate family in gates.GATES
    options: tuple[Option, ...] = ()
    runtime: str | None = None  # the word admissions record (admission.ServingConfig); None: nothing to admit
    files: tuple[str, ...] = ()  # what a directory of this kind holds (glob patterns)
    recognised: bool = False  # a bare directory holding `files` is of this kind
    exporter: str | None = None  # the command that writes such a directory
    url: bool = False  # spec is NAME://HOST:PORT/MODEL

    @property
    def prefix(self) -> str:
        return f"{self.name}://" if self.url else f"{self.name}:"

    @property
    def admits(self) -> bool:
        """Loads an artifact of this machine, whose manifest says where it may serve."""
        return self.runtime is not None

    @property
    def takes_device(self) -> bool:
        return any(option.name == "device" for option in self.options)

    def all_options(self) -> dict[str, Option]:
        common = (_DIMS, _ALLOW_UNVERIFIED) if self.admits else (_DIMS,)
        return {option.name: option for option in self.options + common}

    def gate_family(self, embedder) -> str:
        """The gate family judging `embedder` of this kind: the kind's own, or for a front door that
        reports the server behind it (openai-http: the gateway's `moai_backend`), that server's."""
        return getattr(embedder, "backend_family", None) or self.family

    def holds(self, directory: Path) -> bool:
        return bool(self.files) and all(any(Path(directory).glob(pattern)) for pattern in self.files)

    def serving_config(self, device: str = "cpu", dtype: str = "fp32", provider: str = ""):
        """The configuration an Embedder of this kind serves in, under the kind's runtime word."""
        from .admission import ServingConfig

        if self.runtime is None:
            raise MoaiError(f"{self.name} targets are not admitted artifacts")
        return ServingConfig(self.runtime, device.split(":")[0], dtype, provider)

    def format_spec(self, location: str, **options) -> str:
        """The spec that loads `location` with `options` (in refusals: the exact command to run)."""
        words = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items() if v is not None]
        return f"{self.prefix}{location}" + (f"?{'&'.join(words)}" if words else "")

    def parse_options(self, query: str) -> dict:
        known = self.all_options()
        options = {}
        for key, values in parse_qs(query, keep_blank_values=True).items():
            self._check_known(key, known)
            options[key] = known[key].parse(values[-1], self.name)
        return options

    def _check_known(self, key: str, known: dict) -> None:
        if key not in known:
            raise MoaiError(f"option {key!r} is not known for {self.name} targets "
                            f"(known: {', '.join(sorted(known))})")

    def check_directory(self, location: str) -> None:
        directory = Path(location)
        if not directory.is_dir():
            raise MoaiError(f"{location}: no such directory")
        if self.files and not self.holds(directory):
            written_by = f"; pass a directory written by `{self.exporter}`" if self.exporter else ""
            raise MoaiError(f"{location}: no {' or '.join(self.files)}{written_by}")

    def load(self, location: str, options: dict, name: str, admission: str | None = None):
        """The Embedder for `location`: typed `options` (from the spec, or keywords given in code)
        are checked against the declared ones; a local artifact's directory is checked and its
        admission mode settled here, once, for every kind."""
        known = self.all_options()
        for key in options:
            self._check_known(key, known)
        options = dict(options)
        if self.admits:
            from .admission import admission_mode

            self.check_directory(location)
            options["admission"] = admission_mode(admission or "require", options.pop("allow_unverified", False))
        module, _, function = self.factory.partition(":")
        return getattr(importlib.import_module(module), function)(location, name=name, **options)


KINDS: list[Kind] = [
    Kind("peft", "BASE+ADAPTER: base model + unmerged LoRA adapter, float32 (the reference)",
         "moai_export.embedders.peft_reference:from_spec", "torch", options=(_DEVICE,)),
    Kind("onnx", "DIR: ONNX artifact in onnxruntime (?provider=cpu|cuda|tensorrt, ?intra_op_threads=N, "
                 "?max_batch_tokens=, ?max_batch_size=)",
         "moai_export.embedders.onnx_runtime:from_spec", "onnx",
         options=(Option("provider"), _DEVICE, Option("intra_op_threads", int), Option("inter_op_threads", int),
                  *_BATCHING),
         runtime="onnxruntime", files=("model.onnx",), recognised=True, exporter="moai-export onnx"),
    Kind("vllm", "DIR: `moai-export vllm` directory served by a real vLLM server started for it, "
                 "as serve/vllm/run.sh would (?device=cpu|cuda, ?dtype=)",
         "moai_export.embedders.vllm:served_from_spec", "vllm", options=(_DEVICE, _DTYPE, Option("log_path")),
         runtime="vllm", files=("vllm_serve.json",), recognised=True, exporter="moai-export vllm"),
    Kind("vllm-offline", "DIR: the same directory in vLLM's offline engine, token ids from our tokenizer",
         "moai_export.embedders.vllm:offline_from_spec", "vllm", options=(_DTYPE,),
         runtime="vllm", files=("vllm_serve.json",), exporter="moai-export vllm"),
    Kind("triton", "REPO: a `moai-export triton` repository served by a local tritonserver started for it "
                   "(?model=NAME)",
         "moai_export.embedders.triton:repository_from_spec", "triton", options=(Option("model"), Option("log_path")),
         runtime="triton", files=("*/config.pbtxt",), recognised=True, exporter="moai-export triton"),
    Kind("torch", "DIR: merged / sentence-transformers directory in transformers (?device=, ?dtype=fp32|bf16|fp16, "
                  "?max_batch_tokens=, ?max_batch_size=)",
         "moai_export.embedders.torch_model:from_spec", "torch", options=(_DEVICE, _DTYPE, *_BATCHING),
         runtime="torch", files=("config.json",), recognised=True, exporter="moai-export merge"),
    Kind("engine", "DIR: merged Qwen3 directory in the packed, length-sorted engine (?device=cpu|cuda, "
                   "?dtype=bf16|fp16|fp32, ?max_batch_tokens=, ?max_batch_size=, ?attention=auto|varlen|flex|sdpa, "
                   "?compile=true, ?cuda_graphs=, ?compile_cache_dir=)",
         "moai_export.engine:from_spec", "engine",
         options=(_DEVICE, _DTYPE, *_BATCHING, Option("attention"),
                  Option("compile", bool), Option("cuda_graphs", bool), Option("compile_cache_dir"),
                  Option("warmup", bool)),
         runtime="engine", files=("config.json",), exporter="moai-export merge"),
    Kind("st", "DIR: the same directory through plain sentence-transformers (?device=)",
         "moai_export.embedders.sentence_transformers:from_spec", "torch", options=(_DEVICE,),
         runtime="sentence-transformers", files=("config.json",), exporter="moai-export merge"),
    Kind("triton-http", "HOST:PORT/MODEL: a running Triton server's ensemble over HTTP",
         "moai_export.embedders.triton:http_from_spec", "triton", url=True,
         options=(Option("repository"), Option("timeout", float), Option("ready_timeout", float),
                  Option("concurrency", int))),
    Kind("triton-grpc", "HOST:PORT/MODEL: the same over gRPC",
         "moai_export.embedders.triton:grpc_from_spec", "triton", url=True,
         options=(Option("repository"), Option("timeout", float), Option("ready_timeout", float),
                  Option("concurrency", int))),
    Kind("vllm-http", "HOST:PORT/MODEL: a running vLLM server (?route=v2|v1, ?contract=DIR)",
         "moai_export.embedders.vllm:http_from_spec", "vllm", url=True,
         options=(Option("route"), Option("contract"), Option("timeout", float))),
    # the gateway serves the Triton ensemble or a vLLM server: judged by the gate of the one it reports
    # (Kind.gate_family); a gateway that reports none fronts Triton
    Kind("openai-http", "HOST:PORT/MODEL: an OpenAI-compatible /v1/embeddings (`moai-export gateway`; "
                        "?api_key= or $MOAI_GATEWAY_API_KEY)",
         "moai_export.embedders.openai_http:from_spec", "triton", url=True,
         options=(Option("api_key"), Option("timeout", float))),
]

BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}


def kind_named(name: str) -> Kind:
    try:
        return BY_NAME[name]
    except KeyError:
        raise MoaiError(f"unknown kind {name!r}: expected one of {', '.join(BY_NAME)}") from None


@contextmanager
def registered(kind: Kind):
    """Add a kind for the duration of a block (a plug-in, or a test proving the registry is the
    only list): every command, help text and check sees it; it is gone afterwards."""
    if kind.name in BY_NAME:
        raise MoaiError(f"a kind named {kind.name!r} exists")
    KINDS.append(kind)
    BY_NAME[kind.name] = kind
    try:
        yield kind
    finally:
        KINDS.remove(kind)
        del BY_NAME[kind.name]


def describe_kinds() -> str:
    return "\n".join(f"  {kind.prefix:<16} {kind.summary}" for kind in KINDS)


def kind_names() -> str:
    """`peft:, onnx:, ..., openai-http://`: for help texts."""
    return ", ".join(kind.prefix for kind in KINDS)


def describe_recognised() -> str:
    """How a bare directory is recognised, one line a kind (help texts, error messages)."""
    return "\n".join(f"  {' + '.join(kind.files):<16} {kind.prefix}DIR" for kind in KINDS if kind.recognised)


def parse_spec(spec: str) -> tuple[Kind, str, dict]:
    """(kind, location, typed options) of a spec."""
    body, _, query = spec.partition("?")
    kind, location = _kind_of(spec, body)
    return kind, location, kind.parse_options(query)


def _kind_of(spec: str, body: str) -> tuple[Kind, str]:
    for kind in KINDS:
        if kind.url and body.startswith(kind.prefix):
            return kind, body[len(kind.prefix):]
    name, sep, rest = body.partition(":")
    if sep and name in BY_NAME and not BY_NAME[name].url:
        return BY_NAME[name], rest
    if "+" in body and not Path(body).exists():
        return BY_NAME["peft"], body
    path = Path(body)
    if not path.is_dir():
        raise MoaiError(f"{spec}: not a directory, and not a spec of a known kind:\n{describe_kinds()}")
    for kind in KINDS:
        if kind.recognised and kind.holds(path):
            return kind, body
    files = [" + ".join(kind.files) for kind in KINDS if kind.recognised]
    raise MoaiError(f"{spec}: not an artifact this toolkit recognises (no {', '.join(files[:-1])} or {files[-1]}); "
                    "name its kind, e.g. torch:DIR")


def load_embedder(spec: str, *, name: str | None = None, admission: str | None = None, **options):
    """The Embedder a spec names. Keyword options override the spec's ?options. `admission`
    (require | warn | skip, see moai_export.artifacts.admission) applies to local artifacts only."""
    kind, location, spec_options = parse_spec(spec)
    return kind.load(location, {**spec_options, **options}, name or spec, admission)
