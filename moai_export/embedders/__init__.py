"""Embedders: one interface, many variants. `load_embedder(spec)` builds one from a string,
so the CLI, parity and benchmarks name variants alike:

    peft:BASE+ADAPTER   base model + unmerged LoRA adapter (float32 reference); also BASE+ADAPTER
    torch:DIR           a merged / sentence-transformers directory run by transformers
    st:DIR              the same directory through plain sentence-transformers
                        (these three take ?device=cuda, and torch: also ?dtype=bf16)
    onnx:DIR            an ONNX artifact run by ONNX Runtime
    triton-http://HOST:PORT/MODEL, triton-grpc://HOST:PORT/MODEL
                        the ensemble written by `moai-export triton`, on a running Triton server
    vllm:DIR[?dtype=bfloat16]
                        a `moai-export vllm` directory in vLLM's offline engine (float32 default)
    vllm-http://HOST:PORT/MODEL[?route=v1][&contract=DIR]
                        a running vLLM server (serve/vllm/run.sh); /v2/embed by default
    DIR                 detected: onnx if DIR/model.onnx exists, else torch
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from ..errors import MoaiError
from .base import Embedder

KINDS = ("peft", "torch", "st", "onnx", "vllm")


def parse_spec(spec: str) -> tuple[str, str]:
    """(kind, location) of an embedder spec."""
    for scheme in ("triton-http", "triton-grpc", "vllm-http"):
        if spec.startswith(f"{scheme}://"):
            return scheme, spec[len(scheme) + 3:]
    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS:
        return kind, rest
    if "+" in spec and not Path(spec).exists():
        return "peft", spec
    path = Path(spec)
    if not path.is_dir():
        raise MoaiError(f"{spec}: not a directory, and not a spec like {', '.join(k + ':...' for k in KINDS)}")
    return ("onnx" if (path / "model.onnx").is_file() else "torch"), spec


def load_embedder(spec: str, *, name: str | None = None, **options) -> Embedder:
    try:
        return _load(spec, name, options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        option = str(exc).rsplit("argument", 1)[-1].strip(" '")
        raise MoaiError(f"{spec}: option {option!r} is not known for this kind of target") from None


def _query(query_string: str) -> dict:
    """?key=value options of a spec; integers become int (e.g. intra_op_threads=2)."""
    if not query_string:
        return {}
    return {k: int(v[-1]) if v[-1].isdigit() else v[-1] for k, v in parse_qs(query_string).items()}


def _load(spec: str, name: str | None, options: dict) -> Embedder:
    kind, location = parse_spec(spec)
    name = name or spec
    if kind.startswith("triton-"):
        from .triton import TritonEmbedder

        address, sep, model = location.partition("/")
        if not sep or not model or ":" not in address:
            raise MoaiError(f"{spec}: expected {kind}://HOST:PORT/MODEL")
        return TritonEmbedder(address, model, protocol=kind.split("-")[1], name=name, **options)
    if kind == "vllm-http":
        from ..contract import read_contract
        from .vllm import VllmHttpEmbedder

        location, _, query = location.partition("?")
        address, sep, model = location.partition("/")
        if not sep or not model or ":" not in address:
            raise MoaiError(f"{spec}: expected vllm-http://HOST:PORT/MODEL")
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        contract = read_contract(Path(params["contract"])) if "contract" in params else None
        return VllmHttpEmbedder(f"http://{address}", model, contract=contract, route=params.get("route", "v2"),
                                name=name, **options)
    location, _, query_string = location.partition("?")
    query = _query(query_string)
    if kind == "peft":
        from ..sources import resolve_model_dir
        from .peft_reference import PeftEmbedder

        base, sep, adapter = location.partition("+")
        if not sep or not base or not adapter:
            raise MoaiError(f"{spec}: a PEFT reference is BASE+ADAPTER")
        return PeftEmbedder.from_base_and_adapter(
            resolve_model_dir(base, "base model"), resolve_model_dir(adapter, "adapter"), name=name,
            **{**query, **options})
    path = Path(location)
    if not path.is_dir():
        raise MoaiError(f"{location}: no such directory")
    if kind == "torch":
        from .torch_model import TorchEmbedder

        return TorchEmbedder.from_dir(path, name=name, **{**query, **options})
    if kind == "st":
        from .sentence_transformers import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(path, name=name, **{**query, **options})
    if kind == "vllm":
        from .vllm import VllmOfflineEmbedder

        return VllmOfflineEmbedder(path, name=name, **{**query, **options})
    from .onnx_runtime import OnnxEmbedder

    return OnnxEmbedder(path, name=name, **{**query, **options})
