"""What a result was measured on: every result file carries this, so numbers are never
compared across machines by accident."""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata

PACKAGES = ("torch", "transformers", "sentence-transformers", "onnxruntime", "onnxruntime-gpu", "peft",
            "tritonclient", "vllm", "numpy", "triton")  # triton: torch.compile's GPU kernels


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return platform.processor() or "?"


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        return None


def _gpus() -> list[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA setup must not stop a CPU benchmark
        pass
    return []


def _cuda() -> dict:
    """The CUDA build of torch and the first GPU's compute capability (what kernels it can run)."""
    try:
        import torch

        if torch.cuda.is_available():
            return {"cuda": torch.version.cuda,
                    "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(0)))}
    except Exception:  # as in _gpus
        pass
    return {}


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def machine_description() -> dict:
    cpus = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cpus
    gpus = _gpus()
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": cpus,
        "usable_cpus": usable,
        "memory_gb": _memory_gb(),
        "gpus": gpus,
        **_cuda(),
        "python": platform.python_version(),
        "torch_threads": _torch_threads(),
        "packages": _versions(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    accel = ", ".join(gpus) if gpus else "no GPU"
    info["summary"] = f"{info['cpu']}, {usable} CPUs, {info['memory_gb']} GB RAM, {accel}; {info['platform']}"
    return info


def machine_slug() -> str:
    """A short name of this machine for result folders, from what it is (never hard-coded):
    the GPU's model when there is one ("nvidia-h200"), else the CPU family and count
    ("amd-epyc-2cpu")."""
    import re

    gpus = _gpus()
    if gpus:
        name = gpus[0]
    else:
        try:
            usable = len(os.sched_getaffinity(0))
        except AttributeError:
            usable = os.cpu_count()
        words = [w for w in re.split(r"[^a-z0-9]+", _cpu_model().lower())
                 if w and w not in ("processor", "cpu", "with", "core", "r", "tm", "genuine", "intel")]
        name = "-".join(words[:2] or ["cpu"]) + f"-{usable}cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def default_results_dir(name: str, root: str = "bench/results"):
    """bench/results/<date>-<machine>/<name>: where a bench script writes unless told otherwise."""
    import datetime as dt
    from pathlib import Path

    return Path(root) / f"{dt.date.today().isoformat()}-{machine_slug()}" / name
