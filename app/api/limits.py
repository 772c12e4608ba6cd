"""Refusing request bodies over the configured size, with every 413 in the contract's error body,
and requests over the per-address rate limit, with a 429.

Not FastAPI's `max_body_size`: for a request whose Content-Length is over the limit, Starlette's
limiter replaces the app's response with a plain-text one, which breaks the error contract.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.responses import OrjsonResponse
from app.errors import BodyTooLarge, RateLimited
from app.metrics.registry import RATE_LIMITED
from app.ratelimit import TokenBuckets, retry_after

# probes and Prometheus are never limited: a throttled probe restarts a healthy pod
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                # declared too large: answer before reading a byte of it
                error = BodyTooLarge(self.max_bytes)
                await OrjsonResponse(error.body(), status_code=error.status)(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            # a chunked body declares no length: stop reading once it passes the limit. FastAPI
            # re-raises an HTTPException from body reading, and the error handler renders the 413.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413)
            return message

        await self.app(scope, counting_receive, send)


class AddressLimit:
    """SEGMENTS_RATE_LIMIT_PER_ADDRESS: each client address's requests, before any other work."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets) -> None:
        self.app = app
        self.buckets = buckets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in UNLIMITED_PATHS:
            client = scope.get("client")
            wait = self.buckets.take(client[0] if client else "unknown")
            if wait > 0:
                RATE_LIMITED.labels("address").inc()
                error = RateLimited("address", retry_after(wait))
                response = OrjsonResponse(
                    error.body(),
                    status_code=error.status,
                    headers={"Retry-After": str(error.retry_after)},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
