"""Refusing request bodies over the configured size before they are read into memory."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.responses import OrjsonResponse
from app.errors import BodyTooLarge, error_body


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                # refused before routing, so the app's exception handlers are not around: answer here
                error = BodyTooLarge(self.max_bytes)
                body = error_body(error.code, error.message, error.details)
                await OrjsonResponse(body, status_code=error.status)(scope, receive, send)
                return
        received = 0

        async def counted_receive() -> Message:
            # a chunked body has no Content-Length: count as it arrives
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted_receive, send)
