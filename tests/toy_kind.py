"""A trivial kind that lives outside moai_export: its module is this file, its entry is a
`Kind` registered by the test. It serves a merged directory through transformers, under a
runtime word of its own, so its admissions are its own."""

from __future__ import annotations

from pathlib import Path

from moai_export.artifacts.admission import require_admitted
from moai_export.artifacts.kinds import Kind, Option, kind_named
from moai_export.embedders.torch_model import TorchEmbedder

KIND = Kind("toy", "DIR: a merged directory in transformers, admitted under its own runtime word",
            "toy_kind:from_spec", "torch", options=(Option("device"),), runtime="toy-runtime",
            files=("config.json",), exporter="moai-export merge")


def from_spec(location: str, *, name: str, device: str = "cpu", dims: int | None = None,
              admission: str = "require") -> TorchEmbedder:
    kind = kind_named("toy")
    serving = kind.serving_config(device, "fp32")
    require_admitted(Path(location), serving, mode=admission, spec=kind.format_spec(location, device=device))
    embedder = TorchEmbedder.from_dir(Path(location), device=device, name=name, dims=dims, admission="skip")
    embedder.serving, embedder.artifact_dir = serving, Path(location)
    return embedder
