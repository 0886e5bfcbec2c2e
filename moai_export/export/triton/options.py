"""What a Triton repository is written with (`TritonOptions`), checked before anything is written,
and what follows from it: the precision the encoder computes in, the engine encoder's options and
the serving configuration a gate admits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ...artifacts.admission import ServingConfig
from ...core.addresses import parse_url
from ...core.errors import MoaiError
from ...gates.probe_files import ProbeOptions
from ...gates.table import GateOverrides

ENCODERS = ("python", "onnxruntime", "engine")


VERIFY_SCHEMES = ("grpc", "http")  # --verify-with SCHEME://HOST:PORT: a server that serves the written files


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class TritonOptions:
    name: str = "moai_embedding"
    encoder: str = "python"
    max_batch_size: int = 64
    max_queue_delay_us: int = 2000
    # none: the batcher merges whatever is queued (up to max_batch_size) and the encoder sorts and
    # cuts it by its token budget; preferred 8/16/32 served long passages 0.72x as fast on CPU
    # (bench/triton_batching.py), and Triton's own guidance is to leave them unset
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = 1  # encoder instances (tokenizer gets one per two encoders, at least one)
    intra_op_threads: int = 0  # python encoder: onnxruntime threads per instance (0: its default)
    tensorrt: bool = False  # onnxruntime encoder: TensorRT execution accelerator
    tensorrt_precision: str = "FP16"
    version: int = 1
    force: bool = False
    verify: str = "local"  # local (a tritonserver here) | grpc://HOST:PORT | http://HOST:PORT | none
    verify_wait_s: float = 600.0  # --verify-with: how long to wait for the server to serve the written files
    engine_device: str = "cpu"  # engine encoder: cpu | cuda (KIND_CPU | KIND_GPU)
    engine_dtype: str | None = None  # engine encoder: bf16 | fp16 | fp32 (default: bf16 on cuda, fp32 on cpu)
    engine_max_batch_tokens: int = 16384
    engine_compile: bool = False
    engine_env: str | None = None  # the Python environment with torch for the encoder's stub (default: this one's)
    allow_unverified: bool = False  # derive from an input no gate admitted; the repository is marked unverified
    overrides: GateOverrides = field(default_factory=GateOverrides)
    probes: ProbeOptions = field(default_factory=ProbeOptions)  # --probes: a sample of the user's texts too

    def model_names(self) -> dict[str, str]:
        return {"ensemble": self.name, "tokenizer": f"{self.name}_tokenizer", "encoder": f"{self.name}_encoder"}


def check_options(options: TritonOptions) -> None:
    if not _NAME.match(options.name):
        raise MoaiError(f"model name {options.name!r}: use letters, digits, '_', '-', '.'")
    if options.encoder not in ENCODERS:
        raise MoaiError(f"unknown encoder {options.encoder!r}: expected one of {', '.join(ENCODERS)}")
    if options.max_batch_size < 1:
        raise MoaiError("max batch size must be at least 1")
    if options.instances < 1:
        raise MoaiError("instances must be at least 1")
    if options.engine_device not in ("cpu", "cuda"):
        raise MoaiError(f"--engine-device {options.engine_device!r}: expected cpu or cuda")
    if options.tensorrt and options.encoder != "onnxruntime":
        raise MoaiError("--tensorrt needs --encoder onnxruntime (the GPU path in NVIDIA's container)")
    if options.verify not in ("local", "none"):
        parse_url(options.verify, VERIFY_SCHEMES, "--verify-with")


def served_precision(options: TritonOptions, artifact_precision: str) -> str:
    """What the encoder really computes in: TensorRT FP16 turns any graph into fp16; the engine
    computes in its dtype."""
    if options.encoder == "engine":
        return engine_dtype(options)
    if options.tensorrt and options.tensorrt_precision == "FP16":
        return "fp16"
    return artifact_precision


def serving_config(options: TritonOptions, precision: str) -> ServingConfig:
    from ...artifacts.triton_admission import repository_serving_config

    return repository_serving_config(options.encoder, precision, options.tensorrt, options.engine_device)


def engine_dtype(options: TritonOptions) -> str:
    return options.engine_dtype or ("bf16" if options.engine_device == "cuda" else "fp32")


def engine_options(options: TritonOptions) -> dict:
    """moai_export.engine.EngineOptions of the encoder (the instance's GPU is set at load)."""
    return {"device": "cpu", "dtype": engine_dtype(options), "max_batch_tokens": options.engine_max_batch_tokens,
            "max_batch_size": max(options.max_batch_size, 1), "compile": options.engine_compile}


def moai_source_root() -> str:
    """Where this moai_export is imported from: the encoder's stub imports the same code (a source
    checkout need not be installed in the environment)."""
    import moai_export

    return str(Path(moai_export.__file__).resolve().parents[1])
