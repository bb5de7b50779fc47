"""API errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from tunesmith.generation.errors import GenerationError


class APIError(Exception):
    """An error a client caused (or may retry), with the HTTP status OpenAI would use."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", "invalid_value", param)


def model_not_found(name: str, known: list[str]) -> APIError:
    return APIError(404, f"The model '{name}' does not exist. Available: {', '.join(known)}",
                    "invalid_request_error", "model_not_found", "model")


def api_error(exc: Exception) -> APIError:
    """`exc` as the error a client gets: APIErrors as they are, the engine's GenerationErrors with the
    status, type and code they carry, anything else as a 500 server_error with its message."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, GenerationError):
        return APIError(exc.status, exc.message, exc.type, exc.code)
    return APIError(500, str(exc), "server_error")
