"""API errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations


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


def queue_full(limit: int) -> APIError:
    return APIError(429, f"The server queue is full ({limit} waiting requests); retry later.",
                    "rate_limit_exceeded", "queue_full")
