"""Every error the gateway answers is OpenAI's error JSON:
{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}."""

from __future__ import annotations

import json

from starlette.responses import Response

from ..core.input_rules import InvalidInput

# status -> OpenAI's error type
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
               431: "invalid_request_error", 429: "rate_limit_error",
               500: "server_error", 502: "server_error", 503: "server_error", 504: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after

    def response(self) -> Response:
        body = {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return Response(json.dumps(body), status_code=self.status, headers=headers, media_type="application/json")


def unavailable(message: str) -> ApiError:
    """The upstream (Triton, vLLM) down, restarting or not answering in time: the client may retry."""
    return ApiError(503, message, code="upstream_unavailable", retry_after=1)


def internal_error(exc: Exception) -> ApiError:
    """A bug of the gateway: the exception's type only (its message may hold internals)."""
    return ApiError(500, f"Internal error ({type(exc).__name__}).", code="internal_error")


def invalid_input(error: InvalidInput) -> ApiError:
    """A text that breaks moai_export.core.input_rules: 400, the text named by its place in `input`."""
    message = error.naming(f"input[{error.index}]")
    if error.reason == "invalid_input" and error.index is not None:
        message += " (only strings are accepted, no token arrays: the model's contract tokenizes)"
    return ApiError(400, message + ".", param="input", code=error.reason)
