"""Group commit on a real database: rows share transactions, and a failed one fails only its rows.
Both ways a group is written: from the event loop on its own connection (app.store.
loop_connection, the service's way for a few rows), and in a thread on a pooled connection."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import DataError

from app.errors import AppError
from app.service.assignments import AssignmentWriter
from app.service.idempotency import PendingRow
from app.service.store import Store
from app.settings import Settings
from app.store.assignments import AssignmentRow
from app.store.group_commit import GroupCommitter
from app.store.loop_connection import LoopConnection
from tests.conftest import TEST_ID_HASH, clear_tables, count_rows, store_on

WAYS = pytest.mark.parametrize("on_loop", [True, False], ids=["loop-connection", "thread"])


def _writer(
    store: Store, database_url: str, on_loop: bool
) -> tuple[AssignmentWriter, LoopConnection | None]:
    loop = LoopConnection(store.engine, Settings().with_database(database_url)) if on_loop else None
    return AssignmentWriter(store, TEST_ID_HASH, loop), loop


def _row(customer: str) -> PendingRow:
    return PendingRow(
        AssignmentRow(
            customer, 0, "champions", "v1", 0.1, 0.9, {"recency_days": 1.0}, datetime.now(UTC)
        )
    )


@WAYS
def test_concurrent_rows_share_commits_and_all_land(database_url: str, on_loop: bool) -> None:
    clear_tables(database_url)
    commits: list[int] = []
    counted: list[int] = []

    async def write(rows: list[PendingRow]) -> list[str | AppError | None]:
        commits.append(len(rows))
        return await writer.write_rows(rows)  # the real write, to the real database

    async def scenario() -> None:
        committer = GroupCommitter(write, max_rows=64, max_wait_seconds=0, on_commit=counted.append)
        committer.start()
        await asyncio.gather(*(committer.submit(_row(f"c{i}")) for i in range(300)))
        await committer.close()
        if loop is not None:
            await loop.close()

    with store_on(database_url) as store:
        writer, loop = _writer(store, database_url, on_loop)
        asyncio.run(scenario())
    assert sum(commits) == 300
    assert counted == commits  # the row counts reported for the metric
    assert len(commits) < 300 // 4  # shared: at most 64 per commit, far fewer commits than rows
    assert max(commits) <= 64
    assert count_rows(database_url, "assignments") == 300


@WAYS
def test_a_failed_commit_fails_exactly_its_requests(database_url: str, on_loop: bool) -> None:
    clear_tables(database_url)

    async def scenario() -> list[object]:
        committer = GroupCommitter(writer.write_rows, max_rows=3, max_wait_seconds=0)
        committer.start()
        rows = [_row("a0"), _row("x" * 200), _row("a2"), _row("b0"), _row("b1"), _row("b2")]
        results = await asyncio.gather(*(committer.submit(r) for r in rows), return_exceptions=True)
        await committer.close()
        if loop is not None:
            await loop.close()
        return list(results)

    with store_on(database_url) as store:
        writer, loop = _writer(store, database_url, on_loop)
        results = asyncio.run(scenario())
    assert [type(r) for r in results[:3]] == [DataError] * 3  # the first commit carried the bad row
    assert results[3:] == [None, None, None]
    assert count_rows(database_url, "assignments") == 3
