"""Errors the user sees: one line, no traceback, non-zero exit."""


class MoaiError(Exception):
    """A user-facing error: one line, no traceback."""


class VerificationFailed(MoaiError):
    """An artifact did not match its reference; nothing was published."""
