"""Is a process id still the process we knew? The one answer for everything that decides from a
pid whether to clean up after a run: a killed run's temporary directories (artifacts) and a
killed launcher's server group and work directory (serving).

Linux /proc answers precisely: a zombie has finished (it holds no files, ports or memory) and a
start time tells a reused pid from the process that had it. Where /proc has no entry we can
read (no /proc at all, or hidden from this user by `hidepid`), the kernel is asked with signal 0
instead: a process that exists there counts as alive, so that nothing of a live run is ever
removed because it could not be seen.

Standard library only: the launchers import it without torch.
"""

from __future__ import annotations

import os
from pathlib import Path


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], ppid [1], pgrp [2],
    start time [19]); None when there is no entry to read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (None when /proc cannot tell)."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None


def alive(pid: int, started: int | None = None) -> bool:
    """Running (not a zombie), and the same process when its start time is given (pids are reused).

    Without a readable /proc entry, a pid the kernel still knows is alive, whatever `started`
    says: no start time can be compared there, and a wrong "gone" would remove a live run's files."""
    fields = proc_stat(pid)
    if fields is not None:
        return fields[0] != "Z" and (started is None or int(fields[19]) == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
