"""Artifact directories: written whole or not at all, and described by a manifest.

A stage writes into a temporary directory beside the target and renames it into place only
after its checks pass; a failure, an exception or Ctrl-C removes the temporary directory,
so a directory that exists is a directory that passed.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import platform
import re
import secrets
import shutil
import signal
import tempfile
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import Iterator

from ..core.errors import MoaiError
from ..core.pids import alive
from .admission import MANIFEST_FILE, sha256_file  # one manifest name, one hasher

PARITY_FILE = "moai_parity.json"


_CAUSES = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
           errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.EEXIST: "exists", errno.ENOTDIR: "a path component is a file, not a directory",
           errno.EISDIR: "is a directory"}


def describe_os_error(exc: OSError, path: Path | None = None) -> str:
    """One line naming the path and the cause ("cannot write /x/y: read-only file system")."""
    where = exc.filename or path or "output"
    cause = _CAUSES.get(exc.errno, exc.strerror or str(exc))
    return f"cannot write {where}: {cause}"


def check_output_location(target: Path, *, need_bytes: int = 0, directory: bool = True) -> None:
    """Fail in under a second, before any model loads, when `target` cannot be written: a file
    where a directory must go (or the reverse), a read-only or full file system, no permission.
    A probe file is created and removed in the nearest existing ancestor."""
    target = Path(target).absolute()
    if directory and target.exists() and not target.is_dir():
        raise MoaiError(f"cannot write {target}: exists as a file, not a directory")
    if not directory and target.is_dir():
        raise MoaiError(f"cannot write {target}: is a directory")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise MoaiError(f"cannot write {target}: {parent} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".moai-write-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MoaiError(f"cannot write {target}: {_CAUSES.get(exc.errno, exc.strerror or str(exc))}") from None
    if need_bytes:
        free = shutil.disk_usage(parent).free
        if free < need_bytes:
            raise MoaiError(f"cannot write {target}: not enough space on its file system "
                            f"({free / 1e9:.2f} GB free, about {need_bytes / 1e9:.2f} GB needed)")


def check_target(target: Path, force: bool, *, need_bytes: int = 0) -> None:
    """Refuse early (before any heavy work): a non-empty directory without --force, or an
    output location that cannot be written."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise MoaiError(f"cannot write {target}: exists as a file, not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise MoaiError(f"output {target} exists and is not empty; pass --force to replace it")
    check_output_location(target, need_bytes=need_bytes)


def size_of(directory: Path, pattern: str = "*.safetensors") -> int:
    return sum(p.stat().st_size for p in Path(directory).glob(pattern) if p.is_file())


def remove_leftovers(target: Path, log=None) -> list[Path]:
    """Temporary directories beside `target` that a killed run left behind (SIGKILL, the OOM
    killer): they carry their owner's process id, and those whose process is gone are removed."""
    import sys

    target = Path(target).absolute()
    removed = []
    if not target.parent.is_dir():
        return removed
    for path in target.parent.glob(f".{target.name}.*-*"):
        parts = path.name[len(target.name) + 2:].split("-")  # tmp-PID-xxxx / old-PID
        if len(parts) < 2 or parts[0] not in ("tmp", "old") or not parts[1].isdigit():
            continue
        if int(parts[1]) == os.getpid() or alive(int(parts[1])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        message = f"removed {path}, left by a run that was killed (process {parts[1]} is gone)"
        (log or (lambda m: print(m, file=sys.stderr)))(message)
    return removed


@contextmanager
def atomic_output_dir(target: Path, *, force: bool = False, log=None) -> Iterator[Path]:
    """Yield a fresh temporary directory (named with this process id); on success it replaces
    `target` in one rename. Any failure, Ctrl-C or SIGTERM removes it; an OS error while writing
    becomes one line naming the path and the cause."""
    target = Path(target).absolute()
    check_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target, log)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        with _sigterm_as_interrupt():
            yield tmp
        _publish(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MoaiError(describe_os_error(exc, tmp) + " (nothing was written)") from None
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = native_write_failure(exc)
        if cause:
            raise MoaiError(f"cannot write {target}: {cause} (nothing was written)") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def native_write_failure(exc: Exception) -> str | None:
    """The cause of a failed write that a native writer reports as a plain exception, not an
    OSError: tokenizers' `save` says "... (os error 28)", safetensors raises SafetensorError."""
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found:
        code = int(found.group(1))
        return _CAUSES.get(code, os.strerror(code).lower())
    if type(exc).__name__ == "SafetensorError":
        return str(exc)
    return None


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
    return write_text_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_text_atomically(path: Path, text: str) -> Path:
    """Write a temporary file beside `path` and rename it into place: a full disk or a kill
    leaves the old file (or none), never a half-written one. An OSError names `path` itself
    (a failed write() names no file, and the temporary name would mean nothing to a user)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(tmp, "x", encoding="utf-8") as handle:  # "x": mode 0666 less the umask, as write_text
            handle.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):  # also when it was never created (a path under a file)
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    return path


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
