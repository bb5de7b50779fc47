"""Why the engine ended a request without an answer.

Each error carries the HTTP status, OpenAI error type and code that an API server reports it with
(`tunesmith.serve.errors.api_error` turns one into the response), so the engine stays free of any
web framework while the server's answers stay the OpenAI ones.
"""

from __future__ import annotations


class GenerationError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "engine_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class EngineStopped(GenerationError):
    """Submitted to, or still queued in, an engine that is shutting down."""
    status, type, code = 503, "server_error", "unavailable"

    def __init__(self, message: str = "The server is shutting down."):
        super().__init__(message)


class QueueFull(GenerationError):
    status, type, code = 429, "rate_limit_exceeded", "queue_full"

    def __init__(self, limit: int):
        super().__init__(f"The server queue is full ({limit} waiting requests); retry later.")
        self.limit = limit


class RequestTimedOut(GenerationError):
    status, type, code = 504, "timeout", "timeout"

    def __init__(self, timeout_s: float):
        super().__init__(f"The request timed out after {timeout_s:g} s.")


class AdapterUnloaded(GenerationError):
    """The request's adapter was unloaded after the request was accepted."""
    status, type, code = 404, "invalid_request_error", "model_not_found"

    def __init__(self, adapter: str):
        super().__init__(f"The model '{adapter}' was unloaded.")


class EngineFailure(GenerationError):
    """A bug in a forward pass: the rows it held fail, the engine keeps serving."""

    def __init__(self, exc: BaseException):
        super().__init__(f"generation failed: {type(exc).__name__}: {exc}")
