"""A Triton repository's serving configuration and its admission: the one reader of the
options an ensemble's manifest records, for the launcher and both Triton clients.

A repository is admitted as a whole (its ensemble's manifest covers the three models' files);
its configuration is recorded under the `triton` kind's runtime word. Standard library only:
the launcher imports it without torch.
"""

from __future__ import annotations

from pathlib import Path

from .admission import NotAdmitted, ServingConfig, read_manifest, require_admitted
from .kinds import kind_named


def repository_serving_config(encoder: str, precision: str, tensorrt: bool, engine_device: str = "cpu") -> ServingConfig:
    """A Triton repository's configuration. python encoder: onnxruntime on CPU inside the python
    backend; onnxruntime encoder: Triton's ONNX Runtime backend on a GPU, optionally TensorRT;
    engine encoder: the packed engine in the python backend on its device."""
    device = {"python": "cpu", "engine": engine_device}.get(encoder, "cuda")
    return kind_named("triton").serving_config(device, precision, encoder + ("+tensorrt" if tensorrt else ""))


def recorded_repository_config(ensemble_dir: Path, precision: str | None = None) -> ServingConfig:
    """The configuration the ensemble's manifest records (`precision`: as the server reports it,
    else the recorded one): the one reader of those options for the launcher and the clients."""
    options = (read_manifest(ensemble_dir) or {}).get("options", {})
    return repository_serving_config(options.get("encoder", "python"), precision or options.get("precision", "fp32"),
                                     bool(options.get("tensorrt")), (options.get("engine") or {}).get("device", "cpu"))


def check_repository_admitted(repository: Path, model: str, *, mode: str = "require") -> None:
    """A Triton repository is admitted as a whole: its ensemble's manifest records the run of
    the three models together on a real server, and covers their files."""
    ensemble_dir = Path(repository) / model
    if not (ensemble_dir / "config.pbtxt").is_file():
        raise NotAdmitted(f"{repository}: no model {model!r}")
    require_admitted(ensemble_dir, recorded_repository_config(ensemble_dir), mode=mode,
                     spec=kind_named("triton").format_spec(str(repository), model=model))
