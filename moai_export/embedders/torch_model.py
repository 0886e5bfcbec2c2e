"""In-process torch variants: a transformers backbone (plain or with a PEFT adapter) plus
the contract's pooling, as one module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.batching import serving_budget
from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError
from ..core.pooling import ContractPooler
from ..model_files.contract_tokenizer import ContractTokenizer
from ..model_files.model_contract import read_contract
from ..model_files.safetensors_files import read_index
from .base import TokenEmbedder

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ContractEncoder(torch.nn.Module):
    """backbone -> pooling -> normalize: (input_ids, attention_mask) -> [batch, dims] float32.

    The ONNX exporter traces exactly this module, so the graph pools like the torch variants.
    """

    def __init__(self, backbone: torch.nn.Module, contract: EmbeddingContract):
        super().__init__()
        self.backbone = backbone
        self.pooler = ContractPooler(contract.pooling, contract.normalize)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pooler(hidden, attention_mask)


def load_backbone(directory: Path, dtype: torch.dtype = torch.float32, **kwargs) -> torch.nn.Module:
    """The transformers model of a directory, in `dtype` (transformers 5 would otherwise keep
    the checkpoint's dtype, e.g. bf16, and the reference would silently lose precision)."""
    from transformers import AutoModel

    for weights in sorted(Path(directory).glob("*.safetensors")):
        read_index(weights)  # truncated or corrupt: one line naming the file, not safetensors' traceback
    try:
        model = AutoModel.from_pretrained(str(directory), dtype=dtype, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoaiError(f"cannot load the model in {directory}: {first_line}") from None
    return model.eval()


def check_device(device: str) -> str:
    """A torch device this machine has, or a clear error (not a CUDA traceback)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MoaiError(f"device {device!r} was asked for, but torch sees no CUDA GPU on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise MoaiError(f"unknown device {device!r}: expected cpu or cuda[:N]")
    return device


class TorchEmbedder(TokenEmbedder):
    """Runs a ContractEncoder in-process (CPU by default)."""

    def __init__(
        self,
        encoder: ContractEncoder,
        tokenizer: ContractTokenizer,
        contract: EmbeddingContract,
        *,
        name: str = "torch",
        device: str = "cpu",
        dims: int | None = None,
        dtype: str = "fp32",
        max_batch_tokens: int | None = None,
        max_batch_size: int | None = None,
    ):
        super().__init__(contract, tokenizer, dims=dims,
                         policy=serving_budget(device, max_batch_tokens, max_batch_size))
        self.device = check_device(device)
        self.encoder = encoder.to(device).eval()
        self.dtype = self.precision = dtype
        self.name = name

    @classmethod
    def from_dir(cls, directory: Path, *, dtype: str = "fp32", device: str = "cpu", name: str | None = None,
                 dims: int | None = None, repair_tokenizer: bool = False, admission: str = "require",
                 max_batch_tokens: int | None = None, max_batch_size: int | None = None):
        """A merged (or any sentence-transformers) model directory. `repair_tokenizer` only for
        a source directory (see ContractTokenizer); `admission`: see moai_export.artifacts.admission."""
        from ..artifacts.admission import require_admitted
        from ..artifacts.kinds import kind_named

        directory = Path(directory)
        if dtype not in DTYPES:
            raise MoaiError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        check_device(device)
        kind = kind_named("torch")
        serving = kind.serving_config(device, dtype)
        require_admitted(directory, serving, mode=admission, spec=kind.format_spec(directory, device=device, dtype=dtype))
        contract = read_contract(directory)
        backbone = load_backbone(directory, DTYPES[dtype])
        embedder = cls(
            ContractEncoder(backbone, contract),
            ContractTokenizer.from_dir(directory, contract, repair=repair_tokenizer),
            contract,
            name=name or f"torch:{directory}",
            device=device,
            dims=dims,
            dtype=dtype,
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
        )
        embedder.serving = serving
        embedder.artifact_dir = directory
        return embedder

    @torch.inference_mode()
    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(attention_mask).to(self.device)
        return self.encoder(ids, mask).float().cpu().numpy()

    def close(self) -> None:
        self.encoder = None  # type: ignore[assignment]


def manifest_dtype(directory: Path) -> str:
    """The dtype a gated directory was saved (and verified) in; fp32 for anything else."""
    from ..artifacts.admission import read_manifest

    manifest = read_manifest(directory) or {}
    return manifest.get("options", {}).get("dtype") or "fp32"


def from_spec(location: str, *, name: str, device: str = "cpu", dtype: str | None = None, dims: int | None = None,
              admission: str = "require", max_batch_tokens: int | None = None,
              max_batch_size: int | None = None) -> TorchEmbedder:
    directory = Path(location)
    return TorchEmbedder.from_dir(directory, dtype=dtype or manifest_dtype(directory), device=device, name=name,
                                  dims=dims, admission=admission, max_batch_tokens=max_batch_tokens,
                                  max_batch_size=max_batch_size)
