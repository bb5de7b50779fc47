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


# Where the organization of a request is left for the routes (`request.scope[ORG_SCOPE_KEY]`).
ORG_SCOPE_KEY = "tunesmith.org"


class Guard:
    """`keys`: API key -> organization (a plain string: one key of the organization 'local'; None or
    empty: no key needed, every request is 'local'). `body_limits`: a larger body limit for a route
    prefix (uploads), else `max_body_bytes`."""

    def __init__(self, app, keys: dict[str, str] | str | None, max_body_bytes: int,
                 body_limits: dict[str, int] | None = None):
        self.app = app
        if isinstance(keys, str):
            keys = {keys: "local"}
        self.keys = [(k.encode(), org) for k, org in (keys or {}).items()]
        self.max_body = max_body_bytes
        self.body_limits = body_limits or {}

    def _org(self, headers: dict) -> str | None:
        """The organization whose key the request carries; None when it carries none of them."""
        scheme, _, token = headers.get("authorization", b"").decode("latin-1").partition(" ")
        token_bytes = token.strip().encode("latin-1")
        found = None
        for key, org in self.keys:    # every key compared, so the time taken does not tell which matched
            if scheme.lower() == "bearer" and hmac.compare_digest(token_bytes, key):
                found = org
        return found

    def _limit(self, path: str) -> int:
        return next((limit for prefix, limit in self.body_limits.items() if path.startswith(prefix)), self.max_body)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        org = "local"
        if self.keys and scope["path"] not in OPEN_PATHS:
            org = self._org(headers)
            if org is None:
                return await _send_error(send, 401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
                                         "invalid_request_error", "invalid_api_key",
                                         [(b"www-authenticate", b"Bearer")])
        scope = {**scope, ORG_SCOPE_KEY: org}
        if scope["method"] in ("POST", "PUT", "PATCH"):
            limit = self._limit(scope["path"])
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return await _send_error(send, 413, f"Request body over the {limit}-byte limit.",
                                         "invalid_request_error", "body_too_large")
            # Read (at most limit + 1 bytes of) the body here, then replay it to the app.
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return await _send_error(send, 413, f"Request body over the {limit}-byte limit.",
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
