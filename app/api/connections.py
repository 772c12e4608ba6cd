"""Connections as a worker accepts them: uvicorn's httptools protocol with two guards uvicorn
does not have.

- A client must finish a request's headers within SEGMENTS_HTTP_HEADER_TIMEOUT_SECONDS of
  connecting (or of its previous answer, on a kept-alive connection); otherwise it is answered
  408 and disconnected. uvicorn closes idle kept-alive connections (SEGMENTS_HTTP_KEEP_ALIVE_
  SECONDS) but waits forever for headers that never end, so connections opened and left
  half-sent piled up until they starved every other client (issue 13).
- A worker holds at most SEGMENTS_MAX_CONNECTIONS_PER_WORKER connections: one more is answered
  503 `too_many_connections` and closed at once, before it costs anything else (uvicorn's own
  `limit_concurrency` only refuses once the headers are in, and in plain text).

- A request the HTTP parser cannot read (a malformed request line or header, or one too long
  for it: a URL of tens of kilobytes) is answered 400 `malformed_request`, where uvicorn
  answers plain text, and the connection is closed.

All three answers are the contract's error body. `segments serve` runs uvicorn with this protocol.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import Problem, error_body
from app.settings import Settings


@lru_cache(maxsize=1)
def _limits() -> tuple[float, int]:
    """(header timeout in seconds, connections a worker holds): the worker's settings, read once."""
    settings = Settings()
    return settings.http_header_timeout_seconds, settings.max_connections_per_worker


def _answer(status: str, code: str, message: str, problem: Problem) -> bytes:
    body = orjson.dumps(error_body(code, message, [problem]))
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    )
    if status.startswith("503"):
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout, self._max_connections = _limits()
        self._header_timer: asyncio.TimerHandle | None = None
        # requests whose headers are in and whose answers are not yet complete: the timer only
        # runs while this is 0 (a pipelined request's headers may arrive during an answer)
        self._in_progress = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            transport.write(_too_many_connections(self._max_connections))
            transport.close()
            return
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._in_progress += 1
        self._stop_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._in_progress -= 1
        super().on_response_complete()
        if self._in_progress == 0 and not self.transport.is_closing():
            self._await_headers()  # the next request's (an idle one closes sooner: keep-alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's parser error, in the contract's body rather than plain text
        self.transport.write(_malformed_request())
        self.transport.close()

    def _await_headers(self) -> None:
        self._stop_timer()
        self._header_timer = self.loop.call_later(self._header_timeout, self._headers_late)

    def _stop_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._in_progress == 0 and not self.transport.is_closing():
            self.transport.write(_headers_too_slow(self._header_timeout))
            self.transport.close()


def _too_many_connections(limit: int) -> bytes:
    return _answer(
        "503 Service Unavailable",
        "too_many_connections",
        "This worker holds as many connections as it may; retry shortly, and reuse connections "
        "(keep-alive) rather than opening many.",
        Problem("connection", f"more than {limit} open (SEGMENTS_MAX_CONNECTIONS_PER_WORKER)"),
    )


def _headers_too_slow(seconds: float) -> bytes:
    return _answer(
        "408 Request Timeout",
        "request_timeout",
        "The request's headers did not arrive in time and the connection is closed; send the "
        "whole request at once.",
        Problem(
            "headers", f"not complete within {seconds:g} s (SEGMENTS_HTTP_HEADER_TIMEOUT_SECONDS)"
        ),
    )


def _malformed_request() -> bytes:
    return _answer(
        "400 Bad Request",
        "malformed_request",
        "The request could not be read as HTTP/1.1 and the connection is closed; check the "
        "request line and headers, and send long queries in a body (URLs of tens of kilobytes "
        "are refused).",
        Problem("request", "a malformed or oversized request line or header"),
    )
