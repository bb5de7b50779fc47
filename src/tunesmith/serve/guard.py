"""ASGI middleware in front of every route: the API key and the request-body limit.

Both checks run before FastAPI parses anything, so an unauthenticated client gets 401 (not a
validation error), and an oversized body is refused without being parsed.
"""

from __future__ import annotations

import hmac
import json

from tunesmith.serve.errors import error_body

OPEN_PATHS = {"/health"}


async def _send_error(send, status: int, message: str, type: str, code: str, headers: list | None = None) -> None:
    payload = json.dumps(error_body(message, type, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


class Guard:
    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            scheme, _, token = headers.get("authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), self.api_key):
                return await _send_error(send, 401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
                                         "invalid_request_error", "invalid_api_key",
                                         [(b"www-authenticate", b"Bearer")])
        if scope["method"] in ("POST", "PUT", "PATCH"):
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                return await _send_error(send, 413, f"Request body over the {self.max_body}-byte limit.",
                                         "invalid_request_error", "body_too_large")
            # Read (at most limit + 1 bytes of) the body here, then replay it to the app.
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    return await _send_error(send, 413, f"Request body over the {self.max_body}-byte limit.",
                                             "invalid_request_error", "body_too_large")
                chunks.append(chunk)
                if not message.get("more_body"):
                    break
            body = b"".join(chunks)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)
