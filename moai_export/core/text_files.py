"""Text files a user hands in (training pairs, BEIR corpora, queries and qrels) are read as
UTF-8; a file that is not is one error naming the file and the line, not a UnicodeDecodeError
traceback from deep inside a reader."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .errors import MoaiError


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of a UTF-8 text file, line endings stripped."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise MoaiError(f"{path}:{number}: not UTF-8 text (byte {exc.start + 1} of the line is "
                                f"0x{raw[exc.start]:02x})") from None
