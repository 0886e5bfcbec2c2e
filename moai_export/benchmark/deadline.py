"""Named steps against one shared deadline, for a run on borrowed time (a GPU lent for minutes):
every step's result or failure is recorded and saved as soon as the step ends, so whatever
ends the run (a failure, the deadline, a kill) leaves the figures measured so far.

    run = DeadlineRun(540, {"settings": ...}, save=write_files)
    run.step("build", 150, build)          # skipped, by name, if under 150 s are left
    if run.fits("corpus st-bf16", 30): ... # a part of a step, skipped the same way

`run.data` holds what the caller put in plus `steps` (name -> the step's dict and its seconds),
`errors` (name -> "Type: message") and `skipped` (what the deadline left out, and why).
"""

from __future__ import annotations

import time
import traceback
from typing import Callable

MAX_ERROR_CHARS = 2000


class DeadlineRun:
    def __init__(self, deadline_s: float, record: dict | None = None, *,
                 save: Callable[[dict], None] = lambda data: None, clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] = lambda message: print(message, flush=True)):
        self.deadline_s, self.clock, self.log, self._save = deadline_s, clock, log, save
        self.start = clock()
        self.data = {**(record or {}), "steps": {}, "errors": {}, "skipped": []}

    def left(self) -> float:
        """Seconds until the deadline (negative past it)."""
        return self.deadline_s - (self.clock() - self.start)

    def fits(self, name: str, needs_s: float) -> bool:
        """Whether `name` has the `needs_s` seconds it needs; if not it is recorded as skipped."""
        if self.left() >= needs_s:
            return True
        self.data["skipped"].append(f"{name} (needs ~{needs_s:.0f} s, {self.left():.0f} s left)")
        self.log(f"SKIP {name}: {self.left():.0f} s left")
        return False

    def record_error(self, name: str, exc: BaseException) -> None:
        self.data["errors"][name] = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        traceback.print_exc()

    def step(self, name: str, needs_s: float, fn: Callable[[], dict | None]) -> dict | None:
        """Run `fn` if it fits: its dict (with its seconds) goes to steps[name], an exception to
        errors[name] (the run goes on). Returns the dict, or None when skipped or failed; the
        record is saved either way."""
        if not self.fits(name, needs_s):
            self.save()
            return None
        self.log(f"== {name} ({self.left():.0f} s left)")
        started = self.clock()
        try:
            result = fn()
            self.data["steps"][name] = {"seconds": round(self.clock() - started, 1), **(result or {})}
            return result
        except Exception as exc:  # recorded; the run goes on with what it has
            self.record_error(name, exc)
            return None
        finally:
            self.save()

    def save(self) -> None:
        self._save(self.data)
