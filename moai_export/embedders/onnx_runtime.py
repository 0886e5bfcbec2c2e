"""ONNX Runtime variant: the exported graph already pools and normalizes, so this class only
tokenizes (by the contract) and runs one session."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.batching import serving_budget
from ..core.errors import MoaiError
from ..model_files.contract_tokenizer import ContractTokenizer
from ..model_files.model_contract import read_contract
from .base import TokenEmbedder

ONNX_FILE = "model.onnx"
ONNX_DATA = "model.onnx_data"  # the weights beside a graph over protobuf's 2 GB limit
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"

# The device each provider runs on, for the serving configuration the gate admits.
PROVIDER_DEVICES = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}

# CPU by default; CUDA / TensorRT need the onnxruntime-gpu package (which replaces onnxruntime:
# the two cannot be installed side by side).
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxEmbedder(TokenEmbedder):
    def __init__(
        self,
        directory: Path,
        *,
        provider: str = "cpu",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        name: str | None = None,
        dims: int | None = None,
        admission: str = "require",
        max_batch_tokens: int | None = None,
        max_batch_size: int | None = None,
    ):
        import onnxruntime as ort

        from ..artifacts.admission import require_admitted
        from ..artifacts.kinds import kind_named

        directory = Path(directory)
        if provider in PROVIDERS:
            require_admitted(directory, serving_config(directory, provider), mode=admission,
                             spec=kind_named("onnx").format_spec(directory, provider=provider))
        contract = read_contract(directory)
        super().__init__(contract, ContractTokenizer.from_dir(directory, contract), dims=dims,
                         policy=serving_budget(PROVIDER_DEVICES.get(provider, "cpu"), max_batch_tokens, max_batch_size))
        if provider not in PROVIDERS:
            raise MoaiError(f"unknown provider {provider!r}: expected one of {', '.join(PROVIDERS)}")
        wanted = PROVIDERS[provider][0]
        if wanted not in ort.get_available_providers():
            raise MoaiError(
                f"{wanted} is not available in this onnxruntime; install onnxruntime-gpu instead of "
                "onnxruntime (they cannot be installed together)"
            )
        path = directory / ONNX_FILE
        if not path.is_file():
            raise MoaiError(f"{directory}: no {ONNX_FILE}")
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if inter_op_threads:
            options.inter_op_num_threads = inter_op_threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=PROVIDERS[provider])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise MoaiError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
        _check_signature(self.session, path, self.contract.dims)
        self.provider = provider
        self.precision = onnx_precision(directory)
        self.serving = serving_config(directory, provider)
        self.artifact_dir = directory
        self.name = name or f"onnx:{directory}"

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def close(self) -> None:
        self.session = None


def _check_signature(session, path: Path, dims: int) -> None:
    inputs = {i.name: i.type for i in session.get_inputs()}
    outputs = {o.name: (o.type, o.shape) for o in session.get_outputs()}
    if inputs != {name: "tensor(int64)" for name in INPUT_NAMES}:
        raise MoaiError(f"{path}: expected int64 inputs {list(INPUT_NAMES)}, found {inputs}")
    if set(outputs) != {OUTPUT_NAME} or outputs[OUTPUT_NAME][0] != "tensor(float)":
        raise MoaiError(f"{path}: expected one float output {OUTPUT_NAME!r}, found {outputs}")
    shape = outputs[OUTPUT_NAME][1]
    if len(shape) != 2 or shape[1] != dims:
        raise MoaiError(f"{path}: output shape {shape} does not match the contract's {dims} dims")


def onnx_precision(directory: Path) -> str:
    from ..artifacts.admission import read_manifest

    return ((read_manifest(directory) or {}).get("options", {}).get("precision")) or "fp32"


def serving_config(directory: Path, provider: str):
    from ..artifacts.kinds import kind_named

    return kind_named("onnx").serving_config(PROVIDER_DEVICES.get(provider, provider), onnx_precision(directory),
                                             provider)


def from_spec(location: str, *, name: str, provider: str | None = None, device: str | None = None,
              intra_op_threads: int | None = None, inter_op_threads: int | None = None, dims: int | None = None,
              admission: str = "require", max_batch_tokens: int | None = None,
              max_batch_size: int | None = None) -> OnnxEmbedder:
    """`device=cuda` means the CUDA provider (what `verify --device cuda` passes every kind)."""
    provider = provider or ("cuda" if (device or "cpu").startswith("cuda") else "cpu")
    if provider not in PROVIDERS:
        raise MoaiError(f"unknown provider {provider!r}: expected one of {', '.join(PROVIDERS)}")
    return OnnxEmbedder(Path(location), provider=provider, intra_op_threads=intra_op_threads,
                        inter_op_threads=inter_op_threads, name=name, dims=dims, admission=admission,
                        max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size)
