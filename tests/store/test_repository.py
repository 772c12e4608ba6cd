"""Storing assignments: history and membership agree, whatever order concurrent writers commit in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine

from app.audience.consent import Purpose
from app.audience.profile import CustomerProfile
from app.scoring.model import SegmentModel
from app.service import AssignmentService
from app.store import audiences, repository
from app.store.engine import make_engine
from app.store.repository import AssignmentBatch, AssignmentRow
from tests.conftest import TEST_ID_HASH, clear_tables, make_settings


def _row(
    customer: str, key: str, at: datetime, profile: CustomerProfile | None = None
) -> AssignmentRow:
    return AssignmentRow(customer, 1, key, "v1", 0.5, 0.5, {"recency_days": 1.0}, at, profile)


def test_membership_follows_the_latest_assignment_not_the_last_commit(
    database_url: str, rfm_model_dir: Path
) -> None:
    clear_tables(database_url)
    service = AssignmentService(
        SegmentModel.load(rfm_model_dir),
        make_engine(make_settings(database_url, rfm_model_dir)),
        10,
        id_hash=TEST_ID_HASH,
    )
    earlier = datetime(2026, 1, 1, tzinfo=UTC)
    later = earlier + timedelta(milliseconds=3)
    # request B (scored later) commits first, then request A (scored earlier) commits
    service.write(AssignmentBatch.of_rows([_row("c1", "champions", later)]))
    service.write(AssignmentBatch.of_rows([_row("c1", "hibernating", earlier)]))
    with service.transaction("lookup") as conn:
        current = repository.current_membership(conn, "c1")
        history = repository.customer_history(conn, "c1", 10)
    assert current is not None
    assert current.segment_key == "champions"
    assert [r.segment_key for r in history] == [
        "champions",
        "hibernating",
    ]  # newest first, same order
    service.engine.dispose()


def test_a_late_older_assignment_keeps_the_segment_but_its_consent_counts(
    database_url: str,
) -> None:
    """The segment follows the latest assignment; consent follows the last word received, so a
    withdrawal that arrives on a request scored a moment earlier is never lost."""
    clear_tables(database_url)
    engine = create_engine(database_url)
    earlier = datetime(2026, 1, 1, tzinfo=UTC)
    later = earlier + timedelta(milliseconds=3)
    opted_in = CustomerProfile(consent_advertising=True)
    withdrawn = CustomerProfile(consent_advertising=False)
    with engine.begin() as conn:
        repository.store_batch(
            conn,
            AssignmentBatch.of_rows([_row("c1", "champions", later, opted_in)]),
            TEST_ID_HASH,
        )
    with engine.begin() as conn:
        repository.store_batch(
            conn,
            AssignmentBatch.of_rows([_row("c1", "hibernating", earlier, withdrawn)]),
            TEST_ID_HASH,
        )
    with engine.connect() as conn:
        current = repository.current_membership(conn, "c1")
        audience = audiences.segment_members(conn, "champions", Purpose.ADVERTISING, None, 10)
        feed = audiences.membership_changes(conn, None, Purpose.ADVERTISING, 0, 10)
    assert current is not None
    assert current.segment_key == "champions"
    assert current.assigned_at == later
    assert current.profile is not None
    assert current.profile.consent_advertising is False
    assert audience == []
    # the advertising feed: entered with the opt-in, exited with the withdrawal
    assert [(c.event, c.segment_key, c.cause) for c in feed] == [
        ("entered", "champions", "assignment"),
        ("exited", "champions", "consent"),
    ]
    engine.dispose()


def test_a_customer_twice_in_one_batch_keeps_the_later_row(database_url: str) -> None:
    clear_tables(database_url)
    engine = create_engine(database_url)
    now = datetime.now(UTC)
    batch = AssignmentBatch.of_rows(
        [_row("d", "first", now), _row("e", "other", now), _row("d", "second", now)]
    )
    with engine.begin() as conn:
        repository.store_batch(conn, batch, TEST_ID_HASH)
    with engine.connect() as conn:
        current = repository.current_membership(conn, "d")
        assert current is not None
        assert current.segment_key == "second"
        assert len(repository.customer_history(conn, "d", 10)) == 2
    engine.dispose()


def test_awkward_text_survives_the_bulk_write(database_url: str) -> None:
    """COPY's text format gives backslashes and tabs meaning: they must arrive unchanged."""
    clear_tables(database_url)
    engine = create_engine(database_url)
    awkward_id = "back\\slash ü \\N"
    features = {"job": 'tab\there, back\\slash, "quoted", new\nline', "age": 41.0}
    row = AssignmentRow(awkward_id, 2, "loyal", "v1", 0.123456, 0.5, features, datetime.now(UTC))
    with engine.begin() as conn:
        repository.store_batch(conn, AssignmentBatch.of_rows([row]), TEST_ID_HASH)
    with engine.connect() as conn:
        stored = repository.customer_history(conn, awkward_id, 1)[0]
        current = repository.current_membership(conn, awkward_id)
    assert stored.features == features
    assert stored.customer_id == awkward_id
    assert stored.distance == 0.123456
    assert current is not None
    assert current.customer_id == awkward_id
    engine.dispose()
