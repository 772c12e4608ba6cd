"""ASGI middleware timing every HTTP request into segment_request_duration_seconds."""

from __future__ import annotations

import time

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics.registry import REQUEST_DURATION


class RequestTimer:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # the labelled child per (route, method, status): .labels() costs more than observe()
        self._children: dict[tuple[str, str, str], Histogram] = {}

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
            key = (template, scope["method"], str(status))
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = REQUEST_DURATION.labels(*key)
            child.observe(time.perf_counter() - started)
