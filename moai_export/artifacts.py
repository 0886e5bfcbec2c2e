"""Artifact directories: written whole or not at all, and described by a manifest.

A stage writes into a temporary directory beside the target and renames it into place only
after its checks pass; a failure, an exception or Ctrl-C removes the temporary directory,
so a directory that exists is a directory that passed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import signal
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator

from .admission import MANIFEST_FILE  # one name for the manifest everywhere
from .errors import MoaiError

PARITY_FILE = "moai_parity.json"


def check_target(target: Path, force: bool) -> None:
    """Refuse early (before any heavy work) to overwrite a non-empty directory without --force."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise MoaiError(f"output {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise MoaiError(f"output {target} exists and is not empty; pass --force to replace it")


@contextmanager
def atomic_output_dir(target: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `target` in one rename."""
    target = Path(target).absolute()
    check_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with _sigterm_as_interrupt():
            yield tmp
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, target: Path) -> None:
    # mkdtemp makes the directory 0700 and some writers (safetensors) make files 0600; a
    # serving process often runs as another user, so publish world-readable like `cp` would.
    for path in [tmp, *tmp.rglob("*")]:
        extra = 0o755 if path.is_dir() else 0o644
        os.chmod(path, path.stat().st_mode | extra)
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a CI timeout, `kill`) cleans up like Ctrl-C instead of leaving temp dirs."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(directory: Path, pattern: str = "*.safetensors") -> dict[str, str]:
    """{file name: sha256} of the weight files of a directory."""
    return {p.name: sha256_file(p) for p in sorted(Path(directory).glob(pattern))}


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("moai-export", "torch", "transformers", "peft", "sentence-transformers", "tokenizers",
                    "safetensors", "onnx", "onnxruntime", "tritonclient"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_json(path: Path, data) -> Path:
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)


def write_manifest(directory: Path, *, stage: str, inputs: dict, options: dict, extra: dict | None = None,
                   admitted_for: list[dict] | None = None) -> Path:
    """The manifest, written last: every file in `directory` with its hash and size (what a
    loader re-checks before serving), and the configurations a gate admitted it for."""
    from .admission import shipped_files

    manifest = {
        "stage": stage,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "options": options,
        "files": shipped_files(directory),
        "admitted_for": admitted_for or [],
        "versions": tool_versions(),
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
        **(extra or {}),
    }
    return write_json(Path(directory) / MANIFEST_FILE, manifest)
