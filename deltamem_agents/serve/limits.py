"""A request-body size limit as plain ASGI middleware: over ``max_body_bytes`` the request is answered 413
with an OpenAI-shaped error before the app reads it (by its Content-Length), or as soon as a streamed
(chunked) body passes the limit."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from .errors import error_body

__all__ = ["BodyLimit"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _TooLarge(BaseException):
    """Raised from ``receive`` past the limit; a BaseException so the app's catch-all handlers let it through."""


class BodyLimit:
    def __init__(self, app: Any, max_body_bytes: int) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        self.app, self.limit = app, max_body_bytes

    async def _reject(self, send: Send) -> None:
        body = json.dumps(error_body(f"request body larger than the server's limit of {self.limit} bytes",
                                     "invalid_request_error", None, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    too_big = int(v) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._reject(send)
        seen = 0
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        async def tracked(msg: dict[str, Any]) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._reject(send)
