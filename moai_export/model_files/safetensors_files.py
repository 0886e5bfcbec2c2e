"""Check safetensors files before trusting them: a truncated download or a corrupt header
should be a one-line error naming the file, not a stack trace from deep inside a loader."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..core.errors import MoaiError

MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_index(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors header, after checking the file is whole."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise MoaiError(f"{path}: corrupt safetensors file (only {size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise MoaiError(f"{path}: corrupt or truncated safetensors file (bad header length)")
            header = json.loads(handle.read(header_len))
    except FileNotFoundError:
        raise MoaiError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MoaiError(f"{path}: corrupt safetensors file (header is not valid JSON)") from None
    header.pop("__metadata__", None)
    end = 0
    index = {}
    for name, entry in header.items():
        try:
            begin, stop = entry["data_offsets"]
            index[name] = (entry["dtype"], tuple(entry["shape"]))
        except (KeyError, TypeError, ValueError):
            raise MoaiError(f"{path}: corrupt safetensors file (bad entry for {name!r})") from None
        end = max(end, stop)
    expected = 8 + header_len + end
    if size < expected:
        raise MoaiError(f"{path}: truncated safetensors file ({size} of {expected} bytes)")
    return index


def model_weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory (single file or sharded)."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise MoaiError(f"{directory}: no *.safetensors weights found")
    return files


def check_model_weights(directory: Path) -> None:
    for path in model_weight_files(directory):
        read_index(path)
