"""Resident memory of running processes, read from /proc (Linux): what a soak samples over time
to show that a server does not grow."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def rss_mb(pids: Iterable[int]) -> float:
    """Total resident set size of `pids` in MiB; a process that has gone counts 0."""
    total_kib = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024
