"""The application factory's lifespan: what it starts, it stops, even when a part fails."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from app.lifecycle.watcher import ModelWatcher
from app.main import create_app
from app.service.erasure import NoticePruner
from app.settings import Settings
from app.store.group_commit import GroupCommitter
from tests.conftest import clear_tables, count_rows

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}


def test_a_failing_close_never_skips_draining_the_committer(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background tasks stop in one AsyncExitStack: when the watcher's and the pruner's
    close() fail, the group committer still writes what is queued, and the failure surfaces."""
    clear_tables(database_url)
    drained: list[int] = []
    close = GroupCommitter.close

    async def recorded_close(self: GroupCommitter) -> None:
        await close(self)
        drained.append(count_rows(database_url, "assignments"))

    async def broken_close(self: object) -> None:
        raise RuntimeError(f"{type(self).__name__} failed to stop")

    monkeypatch.setattr(GroupCommitter, "close", recorded_close)
    monkeypatch.setattr(NoticePruner, "close", broken_close)
    monkeypatch.setattr(ModelWatcher, "close", broken_close)
    with (
        pytest.raises(RuntimeError, match="failed to stop"),
        TestClient(create_app(settings)) as client,
    ):
        body = {"customer_id": "last-word", "features": CHAMPION}
        assert client.post("/v1/assignments", json=body).status_code == 200
    assert drained == [1]
