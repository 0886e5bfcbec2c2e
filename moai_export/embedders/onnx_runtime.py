"""ONNX Runtime variant: the exported graph already pools and normalizes, so this class only
tokenizes (by the contract) and runs one session."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import read_contract
from ..errors import MoaiError
from ..inputs import ContractTokenizer
from .base import Embedder

ONNX_FILE = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"

# CPU by default; CUDA / TensorRT need the onnxruntime-gpu package (which replaces onnxruntime:
# the two cannot be installed side by side).
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxEmbedder(Embedder):
    def __init__(
        self,
        directory: Path,
        *,
        provider: str = "cpu",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        name: str | None = None,
    ):
        import onnxruntime as ort

        directory = Path(directory)
        super().__init__(read_contract(directory))
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
        self.tokenizer = ContractTokenizer.from_dir(directory, self.contract)
        self.provider = provider
        self.name = name or f"onnx:{directory}"

    def _encode_batch(self, texts: list[str], kind: str) -> np.ndarray:
        batch = self.tokenizer.tokenize(texts, kind)
        self.num_truncated += batch.num_truncated
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        return self.session.run([OUTPUT_NAME], feeds)[0]

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
