"""In-process torch variants: a transformers backbone (plain or with a PEFT adapter) plus
the contract's pooling, as one module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..contract import EmbeddingContract, read_contract
from ..errors import MoaiError
from ..inputs import ContractTokenizer
from ..pooling import ContractPooler
from .base import Embedder

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

    try:
        model = AutoModel.from_pretrained(str(directory), dtype=dtype, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoaiError(f"cannot load the model in {directory}: {first_line}") from None
    return model.eval()


class TorchEmbedder(Embedder):
    """Runs a ContractEncoder in-process (CPU by default)."""

    def __init__(
        self,
        encoder: ContractEncoder,
        tokenizer: ContractTokenizer,
        contract: EmbeddingContract,
        *,
        name: str = "torch",
        device: str = "cpu",
    ):
        super().__init__(contract)
        self.encoder = encoder.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.name = name

    @classmethod
    def from_dir(cls, directory: Path, *, dtype: str = "fp32", device: str = "cpu", name: str | None = None):
        """A merged (or any sentence-transformers) model directory."""
        directory = Path(directory)
        if dtype not in DTYPES:
            raise MoaiError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        contract = read_contract(directory)
        backbone = load_backbone(directory, DTYPES[dtype])
        return cls(
            ContractEncoder(backbone, contract),
            ContractTokenizer.from_dir(directory, contract),
            contract,
            name=name or f"torch:{directory}",
            device=device,
        )

    @torch.inference_mode()
    def _encode_batch(self, texts: list[str], kind: str) -> np.ndarray:
        batch = self.tokenizer.tokenize(texts, kind)
        self.num_truncated += batch.num_truncated
        input_ids = torch.from_numpy(batch.input_ids).to(self.device)
        attention_mask = torch.from_numpy(batch.attention_mask).to(self.device)
        return self.encoder(input_ids, attention_mask).float().cpu().numpy()

    def close(self) -> None:
        self.encoder = None  # type: ignore[assignment]
