"""The reference every artifact is compared against: the base model in float32 with the
LoRA adapter applied by PEFT at run time (nothing merged)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..core.contract import EmbeddingContract
from ..model_files.contract_tokenizer import ContractTokenizer
from ..model_files.lora_adapter import AdapterInfo, load_adapter, read_adapter
from ..model_files.model_contract import read_contract
from .torch_model import ContractEncoder, TorchEmbedder, load_backbone


def reference_contract(base_dir: Path, adapter_dir: Path, *, max_tokens: int | None = None) -> EmbeddingContract:
    """An adapter repository may carry its own sentence-transformers files (prompts, max
    length of the fine-tune); they win over the base model's."""
    adapter_dir = Path(adapter_dir)
    has_own = (adapter_dir / "modules.json").is_file() or (adapter_dir / "moai_contract.json").is_file()
    return read_contract(adapter_dir if has_own else Path(base_dir), max_tokens=max_tokens)


class PeftEmbedder(TorchEmbedder):
    """Base + unmerged adapter, float32."""

    def __init__(self, *args, adapter: AdapterInfo, **kwargs):
        super().__init__(*args, **kwargs)
        self.adapter = adapter

    @classmethod
    def from_base_and_adapter(
        cls,
        base_dir: Path,
        adapter_dir: Path,
        *,
        contract: EmbeddingContract | None = None,
        name: str | None = None,
        device: str = "cpu",
        dims: int | None = None,
    ) -> "PeftEmbedder":
        base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
        info = read_adapter(adapter_dir)
        contract = contract or reference_contract(base_dir, adapter_dir)
        model = load_adapter(load_backbone(base_dir), info)
        tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer.json").is_file() else base_dir
        return cls(
            ContractEncoder(model, contract),
            ContractTokenizer.from_dir(tokenizer_dir, contract, repair=True),  # a source
            contract,
            name=name or f"peft:{base_dir}+{adapter_dir}",
            device=device,
            dims=dims,
            adapter=info,
        )

    @property
    def peft_model(self):
        return self.encoder.backbone

    @contextmanager
    def adapter_disabled(self):
        """Embed with the plain base model (the adapter's effect is what parity must see)."""
        with self.peft_model.disable_adapter():
            yield self


def from_spec(location: str, *, name: str, device: str = "cpu", dims: int | None = None) -> PeftEmbedder:
    """BASE+ADAPTER, each a local directory or a hub id."""
    from ..core.errors import MoaiError
    from ..model_files.sources import resolve_model_dir

    base, sep, adapter = location.partition("+")
    if not sep or not base or not adapter:
        raise MoaiError(f"{location}: a PEFT reference is BASE+ADAPTER")
    return PeftEmbedder.from_base_and_adapter(resolve_model_dir(base, "base model"),
                                              resolve_model_dir(adapter, "adapter"), name=name, device=device, dims=dims)
