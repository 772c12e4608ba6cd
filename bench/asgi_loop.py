"""The service's ASGI app driven in-process, for bench/instructions.py (which runs it under
callgrind): `python bench/asgi_loop.py PATH REQUESTS SIGNALS`, from the tree whose `app` to run.

It starts the app's lifespan (settings from the environment), warms up, then answers REQUESTS
POSTs of one new customer each to PATH, one at a time, and hands over to its driver through
files in the folder SIGNALS: it writes `warm` and waits for `go`, writes `done` after the last
answer and waits for `stop`. Every answer must be a 200.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, os.getcwd())  # the tree's `app`, not this file's

from app.main import create_app

WARM_UP = 200
FEATURES = {"recency_days": 12.0, "frequency": 5, "monetary": 830.25}


async def main(path: str, requests: int, signals: Path) -> None:
    route, _, query = path.partition("?")
    app = create_app()
    async with app.router.lifespan_context(app) as state:
        for number in range(WARM_UP):
            await _post(app, state, route, query, f"warm-{number}")
        (signals / "warm").touch()
        await _until(signals / "go")
        for number in range(requests):
            await _post(app, state, route, query, f"counted-{number}")
        (signals / "done").touch()
        await _until(signals / "stop")


async def _post(app: Any, state: Any, route: str, query: str, customer_id: str) -> None:
    body = orjson.dumps({"customer_id": customer_id, "features": FEATURES})
    received = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect: the request is answered first
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": dict(state or {}),
    }
    await app(scope, receive, send)
    if sent[0]["status"] != 200:
        raise SystemExit(f"{route} answered {sent[0]['status']}: {sent[1].get('body', b'')!r}")


async def _until(flag: Path) -> None:
    while not flag.exists():
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
