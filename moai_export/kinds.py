"""The registry of variant kinds: how each is named in a spec, how a bare directory of it is
recognised, which Embedder serves it and which gate family judges it. The CLI, `verify`,
`moai-bench` and the demo all go through here, so adding a kind is its Embedder module (with a
`from_spec(location, *, name, **options)` factory) plus one entry below.

Specs: `KIND:LOCATION[?key=value&...]`, `SCHEME://HOST:PORT/MODEL[?...]`, `BASE+ADAPTER`, or a
bare directory (recognised in the order of KINDS). Option values that look like integers or
booleans are converted (`?intra_op_threads=2`, `?allow_unverified=true`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs

from .errors import MoaiError


def _has(*names: str) -> Callable[[Path], bool]:
    return lambda path: all((path / name).is_file() for name in names)


def _is_triton_repository(path: Path) -> bool:
    return any(path.glob("*/config.pbtxt"))


@dataclass(frozen=True)
class Kind:
    name: str
    summary: str
    factory: str  # "module:function", imported only when used (torch, onnxruntime stay unloaded)
    family: str  # gate family in gates.GATES
    url: bool = False  # spec is NAME://HOST:PORT/MODEL
    recognise: Callable[[Path], bool] | None = None  # a bare directory is this kind
    local: bool = True  # loads an artifact of this machine: checks its admission (moai_export.admission)

    @property
    def prefix(self) -> str:
        return f"{self.name}://" if self.url else f"{self.name}:"

    def load(self, location: str, options: dict, name: str):
        module, _, function = self.factory.partition(":")
        return getattr(importlib.import_module(module), function)(location, name=name, **options)


KINDS: tuple[Kind, ...] = (
    Kind("peft", "BASE+ADAPTER: base model + unmerged LoRA adapter, float32 (the reference)",
         "moai_export.embedders.peft_reference:from_spec", "torch", local=False),
    Kind("onnx", "DIR: ONNX artifact in onnxruntime (?provider=cpu|cuda|tensorrt, ?intra_op_threads=N)",
         "moai_export.embedders.onnx_runtime:from_spec", "onnx", recognise=_has("model.onnx")),
    Kind("vllm", "DIR: `moai-export vllm` directory served by a real vLLM server started for it, "
                 "as serve/vllm/run.sh would (?device=cpu|cuda, ?dtype=)",
         "moai_export.embedders.vllm:served_from_spec", "vllm", recognise=_has("vllm_serve.json")),
    Kind("vllm-offline", "DIR: the same directory in vLLM's offline engine, token ids from our tokenizer",
         "moai_export.embedders.vllm:offline_from_spec", "vllm"),
    Kind("triton", "REPO: a `moai-export triton` repository served by a local tritonserver started for it "
                   "(?model=NAME)",
         "moai_export.embedders.triton:repository_from_spec", "triton", recognise=_is_triton_repository),
    Kind("torch", "DIR: merged / sentence-transformers directory in transformers (?device=, ?dtype=fp32|bf16|fp16)",
         "moai_export.embedders.torch_model:from_spec", "torch", recognise=_has("config.json")),
    Kind("engine", "DIR: merged Qwen3 directory in the packed, length-sorted engine (?device=cpu|cuda, "
                   "?dtype=bf16|fp16|fp32, ?max_batch_tokens=, ?max_batch_size=, ?attention=auto|varlen|flex|sdpa, "
                   "?compile=true, ?cuda_graphs=, ?compile_cache_dir=)",
         "moai_export.engine:from_spec", "engine"),
    Kind("st", "DIR: the same directory through plain sentence-transformers (?device=)",
         "moai_export.embedders.sentence_transformers:from_spec", "torch"),
    Kind("triton-http", "HOST:PORT/MODEL: a running Triton server's ensemble over HTTP",
         "moai_export.embedders.triton:http_from_spec", "triton", url=True, local=False),
    Kind("triton-grpc", "HOST:PORT/MODEL: the same over gRPC",
         "moai_export.embedders.triton:grpc_from_spec", "triton", url=True, local=False),
    Kind("vllm-http", "HOST:PORT/MODEL: a running vLLM server (?route=v2|v1, ?contract=DIR)",
         "moai_export.embedders.vllm:http_from_spec", "vllm", url=True, local=False),
    # the gateway serves the Triton ensemble: the same graph, the same gate
    Kind("openai-http", "HOST:PORT/MODEL: an OpenAI-compatible /v1/embeddings (`moai-export gateway`; "
                        "?api_key= or $MOAI_GATEWAY_API_KEY)",
         "moai_export.embedders.openai_http:from_spec", "triton", url=True, local=False),
)

BY_NAME = {kind.name: kind for kind in KINDS}


def describe_kinds() -> str:
    return "\n".join(f"  {kind.prefix:<16} {kind.summary}" for kind in KINDS)


def parse_options(query: str) -> dict:
    """?key=value options; integers become int, true/false become bool."""
    options = {}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        value = values[-1]
        if value.lstrip("-").isdigit():
            options[key] = int(value)
        elif value.lower() in ("true", "false"):
            options[key] = value.lower() == "true"
        else:
            options[key] = value
    return options


def parse_spec(spec: str) -> tuple[Kind, str, dict]:
    """(kind, location, options) of a spec."""
    body, _, query = spec.partition("?")
    options = parse_options(query)
    for kind in KINDS:
        if kind.url and body.startswith(kind.prefix):
            return kind, body[len(kind.prefix):], options
    name, sep, rest = body.partition(":")
    if sep and name in BY_NAME and not BY_NAME[name].url:
        return BY_NAME[name], rest, options
    if "+" in body and not Path(body).exists():
        return BY_NAME["peft"], body, options
    path = Path(body)
    if not path.is_dir():
        raise MoaiError(f"{spec}: not a directory, and not a spec of a known kind:\n{describe_kinds()}")
    for kind in KINDS:
        if kind.recognise and kind.recognise(path):
            return kind, body, options
    raise MoaiError(f"{spec}: not an artifact this toolkit recognises (no model.onnx, vllm_serve.json, "
                    "Triton config.pbtxt or config.json); name its kind, e.g. torch:DIR")


def load_embedder(spec: str, *, name: str | None = None, admission: str | None = None, **options):
    """The Embedder a spec names. Keyword options override the spec's ?options. `admission`
    (require | warn | skip, see moai_export.admission) applies to local artifacts only."""
    kind, location, spec_options = parse_spec(spec)
    if admission is not None and kind.local:
        options["admission"] = admission
    try:
        return kind.load(location, {**spec_options, **options}, name or spec)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        option = str(exc).rsplit("argument", 1)[-1].strip(" '")
        raise MoaiError(f"{spec}: option {option!r} is not known for {kind.name} targets") from None
