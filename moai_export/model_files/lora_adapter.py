"""A LoRA adapter directory: read it, check it fits the base, load it so that every tensor
in the file really lands in the model (a mismatched key would otherwise leave the base
weights in place and the "fine-tuned" model silently equal to the base)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import MoaiError
from .safetensors_files import read_index

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


@dataclass
class AdapterInfo:
    path: Path
    config: dict
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape), from the file header

    @property
    def base_name(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def rank(self) -> int:
        return int(self.config.get("r", 0))

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", 0))

    @property
    def target_modules(self) -> list[str]:
        targets = self.config.get("target_modules") or []
        return [targets] if isinstance(targets, str) else list(targets)

    def lora_modules(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """{module path in the base model: {"A": shape, "B": shape}}."""
        modules: dict[str, dict[str, tuple[int, ...]]] = {}
        for name, (_, shape) in self.tensors.items():
            for part in ("A", "B"):
                suffix = f".lora_{part}.weight"
                if name.endswith(suffix):
                    module = name[: -len(suffix)]
                    module = module[len(_PREFIX) :] if module.startswith(_PREFIX) else module
                    modules.setdefault(module, {})[part] = shape
        return modules


def read_adapter(directory: Path) -> AdapterInfo:
    directory = Path(directory)
    config_path = directory / ADAPTER_CONFIG
    if not config_path.is_file():
        raise MoaiError(f"{directory}: missing {ADAPTER_CONFIG}; is this a PEFT adapter directory?")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MoaiError(f"{config_path}: malformed JSON ({exc})") from None
    if not isinstance(config, dict):
        raise MoaiError(f"{config_path}: malformed (expected a JSON object)")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise MoaiError(f"{config_path}: peft_type is {config.get('peft_type')!r}; only LORA adapters are supported")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise MoaiError(f"{config_path}: malformed, no {key!r}")
    expected = {"r": (int, "a positive integer"), "lora_alpha": ((int, float), "a number"),
                "target_modules": ((list, str), "a list of module names")}
    for key, (types, words) in expected.items():
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, types) or (key == "r" and value < 1):
            raise MoaiError(f"{config_path}: {key!r} must be {words}, not {value!r}")
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        if (directory / "adapter_model.bin").is_file():
            raise MoaiError(f"{directory}: adapter_model.bin (pickle) is not supported; save it as safetensors")
        raise MoaiError(f"{directory}: missing {ADAPTER_WEIGHTS}")
    info = AdapterInfo(directory, config, read_index(weights))
    if not info.lora_modules():
        raise MoaiError(f"{weights}: holds no LoRA tensors (lora_A / lora_B)")
    return info


def check_fits_base(info: AdapterInfo, base: torch.nn.Module) -> None:
    """Raise if the adapter names modules the base lacks or was trained on other shapes."""
    base_modules = dict(base.named_modules())
    targets = info.target_modules
    if targets and not any(name.rsplit(".", 1)[-1] in targets for name in base_modules):
        raise MoaiError(f"target modules {sorted(targets)} of the adapter do not exist in the base model")
    absent, wrong = [], []
    for module, shapes in sorted(info.lora_modules().items()):
        layer = base_modules.get(module)
        if layer is None:
            absent.append(module)
            continue
        if not isinstance(layer, torch.nn.Linear) or "A" not in shapes or "B" not in shapes:
            wrong.append(f"{module} (not a Linear layer with lora_A and lora_B)")
            continue
        in_features, out_features = shapes["A"][1], shapes["B"][0]
        if (in_features, out_features) != (layer.in_features, layer.out_features):
            wrong.append(
                f"{module} (adapter {in_features}->{out_features}, base {layer.in_features}->{layer.out_features})"
            )
    if absent:
        raise MoaiError(
            f"the adapter targets {len(absent)} modules absent from the base model, e.g. {absent[0]}; "
            "was it trained on another base?"
        )
    if wrong:
        raise MoaiError(
            f"the adapter was trained on another base: {len(wrong)} modules differ in shape, e.g. {wrong[0]}"
        )


def load_adapter(base: torch.nn.Module, info: AdapterInfo):
    """PeftModel around `base` with the adapter loaded and proven loaded, in eval mode."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    check_fits_base(info, base)
    try:
        model = PeftModel.from_pretrained(base, str(info.path), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoaiError(f"cannot load adapter {info.path}: {first_line}") from None
    model.eval()
    loaded = get_peft_model_state_dict(model)
    expected = load_file(str(info.path / ADAPTER_WEIGHTS))
    missing = [k for k in expected if k not in loaded]
    differ = [k for k in expected if k in loaded and not torch.equal(loaded[k].to(expected[k].dtype), expected[k])]
    if missing or differ:
        example = (missing or differ)[0]
        raise MoaiError(
            f"adapter weights did not load into the model: {len(missing)} missing, {len(differ)} differ "
            f"(e.g. {example})"
        )
    return model
