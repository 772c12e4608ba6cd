"""ASGI middleware timing every HTTP request into segment_request_duration_seconds."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics.registry import REQUEST_DURATION


class RequestTimer:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            # the route template, never the raw path: label values must stay few
            template = getattr(route, "path", None) or "unmatched"
            REQUEST_DURATION.labels(template, scope["method"], str(status)).observe(
                time.perf_counter() - started
            )
