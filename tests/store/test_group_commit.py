"""Group commit on a real database: rows share transactions, and a failed one fails only its rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import DataError

from app.scoring.model import SegmentModel
from app.service import AssignmentService
from app.store.engine import make_engine
from app.store.group_commit import GroupCommitter
from app.store.repository import AssignmentRow
from tests.conftest import TEST_ID_HASH, clear_tables, count_rows, make_settings


def _row(customer: str) -> AssignmentRow:
    return AssignmentRow(
        customer, 0, "champions", "v1", 0.1, 0.9, {"recency_days": 1.0}, datetime.now(UTC)
    )


def _service(database_url: str, model_dir: Path) -> AssignmentService:
    return AssignmentService(
        SegmentModel.load(model_dir),
        make_engine(make_settings(database_url, model_dir)),
        10,
        id_hash=TEST_ID_HASH,
    )


def test_concurrent_rows_share_commits_and_all_land(database_url: str, rfm_model_dir: Path) -> None:
    clear_tables(database_url)
    service = _service(database_url, rfm_model_dir)
    commits: list[int] = []

    def write(batch):  # type: ignore[no-untyped-def]
        service.write(batch)  # the real write, to the real database
        commits.append(len(batch))

    async def scenario() -> None:
        committer = GroupCommitter(write, max_rows=64, max_wait_seconds=0)
        committer.start()
        await asyncio.gather(*(committer.submit(_row(f"c{i}")) for i in range(300)))
        await committer.close()

    asyncio.run(scenario())
    assert sum(commits) == 300
    assert len(commits) < 300 // 4  # shared: at most 64 per commit, far fewer commits than rows
    assert max(commits) <= 64
    assert count_rows(database_url, "assignments") == 300
    service.engine.dispose()


def test_a_failed_commit_fails_exactly_its_requests(
    database_url: str, on_postgres: bool, rfm_model_dir: Path
) -> None:
    if not on_postgres:
        pytest.skip(
            "needs PostgreSQL's column length check to make a commit fail: set TEST_DATABASE_URL"
        )
    clear_tables(database_url)
    service = _service(database_url, rfm_model_dir)

    async def scenario() -> list[BaseException | None]:
        committer = GroupCommitter(service.write, max_rows=3, max_wait_seconds=0)
        committer.start()
        rows = [_row("a0"), _row("x" * 200), _row("a2"), _row("b0"), _row("b1"), _row("b2")]
        results = await asyncio.gather(*(committer.submit(r) for r in rows), return_exceptions=True)
        await committer.close()
        return list(results)

    results = asyncio.run(scenario())
    assert [type(r) for r in results[:3]] == [DataError] * 3  # the first commit carried the bad row
    assert results[3:] == [None, None, None]
    assert count_rows(database_url, "assignments") == 3
    service.engine.dispose()
