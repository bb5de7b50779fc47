"""Every error a route can raise, answered in OpenAI's shape {"error": {message, type, param, code}}.

| raised                          | status | type / code                               |
|---------------------------------|--------|-------------------------------------------|
| APIError                        | its own| its own                                   |
| GenerationError (the engine)    | its own| its own (429 queue_full, 503, 504 ...)    |
| RequestValidationError (body)   | 400    | invalid_request_error / invalid_request   |
| HTTPException (404 route, 405)  | its own| invalid_request_error / null              |
| UserError (a bad adapter folder)| 400    | invalid_request_error / invalid_adapter   |
| anything else (a bug)           | 500    | server_error / internal_error             |
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import UserError
from tunesmith.generation.errors import GenerationError
from tunesmith.serve.errors import APIError, api_error, error_body

log = logging.getLogger("tunesmith.serve")


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """(message, param) for the first of pydantic's errors on a request body: "messages: Field required"."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", []) if p != "body"]
    field = ".".join(loc) or None
    return (f"{field}: {first.get('msg', 'invalid request')}" if field else first.get("msg", "invalid request body")), field


async def on_api_error(request, exc: APIError | GenerationError) -> JSONResponse:
    error = api_error(exc)
    return JSONResponse(error.body(), status_code=error.status)


async def on_invalid_body(request, exc: RequestValidationError) -> JSONResponse:
    message, field = validation_message(exc.errors())
    return JSONResponse(error_body(message, "invalid_request_error", "invalid_request", field), status_code=400)


async def on_http_error(request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None), status_code=exc.status_code)


async def on_user_error(request, exc: UserError) -> JSONResponse:
    return JSONResponse(error_body(str(exc), "invalid_request_error", "invalid_adapter"), status_code=400)


def bug_response(exc: Exception) -> JSONResponse:
    # The client gets the OpenAI error shape (its SDK parses it) and no internals beyond the type.
    return JSONResponse(error_body(f"Internal server error ({type(exc).__name__}); the server log has the details.",
                                   "server_error", "internal_error"), status_code=500)


class AnswerBugs:
    """ASGI middleware: a bug in a route is answered with the OpenAI-shaped 500 here and its traceback goes to
    the server log. The exception stops here: an exception handler for `Exception` answers the same, but Starlette
    then re-raises it, uvicorn closes the connection, and a client that reuses that keep-alive connection (the
    openai SDK's pool does) gets "connection reset" on its next request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:      # a streamed answer cut by a bug: nothing more can be said on this connection
                raise
            log.error("a bug in %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            await bug_response(exc)(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(GenerationError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_invalid_body)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(UserError, on_user_error)
    app.add_middleware(AnswerBugs)
