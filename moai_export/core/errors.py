"""Errors the user sees: one line, no traceback, non-zero exit."""


class MoaiError(Exception):
    """A user-facing error: one line, no traceback."""


class VerificationFailed(MoaiError):
    """An artifact did not match its reference; nothing was published. `report` holds the figures."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report
