"""The application factory's lifespan: what it starts, it stops, even when a part fails."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.lifecycle.watcher import ModelWatcher
from app.main import create_app
from app.service.erasure import NoticePruner
from app.settings import Settings
from app.store.driver import Statement
from app.store.loop_connection import LoopConnection
from tests.conftest import clear_tables, count_rows

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}


def test_a_failing_close_never_skips_draining_the_committer(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background tasks stop in one AsyncExitStack. Two assignments are in the group
    committer when the service shuts down (one being written, held until the shutdown starts,
    one queued behind it); the watcher's and the pruner's close() fail; both are stored all
    the same, and the failure still surfaces."""
    clear_tables(database_url)
    writing, shutting_down = threading.Event(), threading.Event()
    write = LoopConnection.write  # the group committer's writes go there, from the event loop

    async def write_once_shutdown_begins(
        self: LoopConnection, statements: Sequence[Statement], *, rows_of: int = -1
    ) -> list[tuple[Any, ...]]:
        writing.set()
        for _ in range(1000):  # at most 10 s
            if shutting_down.is_set():
                break
            await asyncio.sleep(0.01)  # the event loop goes on: the shutdown starts meanwhile
        return await write(self, statements, rows_of=rows_of)

    async def broken_close(self: object) -> None:
        shutting_down.set()
        raise RuntimeError(f"{type(self).__name__} failed to stop")

    monkeypatch.setattr(LoopConnection, "write", write_once_shutdown_begins)
    monkeypatch.setattr(NoticePruner, "close", broken_close)
    monkeypatch.setattr(ModelWatcher, "close", broken_close)
    stopping = pytest.raises(RuntimeError, match="failed to stop")
    with stopping, TestClient(create_app(settings)) as client:
        service = client.app_state["runtime"].assignments
        assert client.portal is not None
        for customer in ("first", "queued"):
            body = {"customer_id": customer, "features": CHAMPION}
            client.portal.start_task_soon(functools.partial(service.assign_one, body, persist=True))
            assert writing.wait(timeout=10)  # the first is being written: the next queues
    assert count_rows(database_url, "assignments") == 2
