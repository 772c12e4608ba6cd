"""Storing assignments: history and membership agree, whatever order concurrent writers commit in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine

from app.audience.consent import Purpose
from app.audience.profile import CustomerProfile
from app.errors import StoreFailed
from app.service.assignments import AssignmentWriter
from app.service.store import Store
from app.store import audiences
from app.store.assignments import SMALL_BATCH, AssignmentBatch, AssignmentRow, store_batch
from app.store.history import current_membership, customer_history
from tests.conftest import TEST_ID_HASH, clear_tables, store_on
from tests.store.test_store_failures import table_locked


def _row(
    customer: str, key: str, at: datetime, profile: CustomerProfile | None = None
) -> AssignmentRow:
    return AssignmentRow(customer, 1, key, "v1", 0.5, 0.5, {"recency_days": 1.0}, at, profile)


# store_batch's two ways in: a few rows go with the merge as JSON, a batch is COPYed (its history,
# and its memberships into the staging table); the tests below run both, a batch made of their
# rows and enough other customers
BOTH_PATHS = pytest.mark.parametrize("others", [0, SMALL_BATCH], ids=["few-rows", "batch"])


def _with_others(rows: list[AssignmentRow], others: int) -> AssignmentBatch:
    at = rows[0].assigned_at
    return AssignmentBatch.of_rows(rows + [_row(f"other-{i}", "other", at) for i in range(others)])


def test_membership_follows_the_latest_assignment_not_the_last_commit(database_url: str) -> None:
    clear_tables(database_url)
    earlier = datetime(2026, 1, 1, tzinfo=UTC)
    later = earlier + timedelta(milliseconds=3)
    with store_on(database_url) as store:
        writer = AssignmentWriter(store, TEST_ID_HASH)
        # request B (scored later) commits first, then request A (scored earlier) commits
        writer.write(AssignmentBatch.of_rows([_row("c1", "champions", later)]))
        writer.write(AssignmentBatch.of_rows([_row("c1", "hibernating", earlier)]))
        with store.transaction("lookup") as conn:
            current = current_membership(conn, "c1")
            history = customer_history(conn, "c1", 10)
    assert current is not None
    assert current.assignment.segment_key == "champions"
    # newest first, the same order membership follows
    assert [r.segment_key for r in history] == ["champions", "hibernating"]


@BOTH_PATHS
def test_a_late_older_assignment_keeps_the_segment_but_its_consent_counts(
    database_url: str, others: int
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
        store_batch(
            conn,
            _with_others([_row("c1", "champions", later, opted_in)], others),
            TEST_ID_HASH,
        )
    with engine.begin() as conn:
        store_batch(
            conn,
            _with_others([_row("c1", "hibernating", earlier, withdrawn)], others),
            TEST_ID_HASH,
        )
    with engine.connect() as conn:
        current = current_membership(conn, "c1")
        page = audiences.AudiencePage("champions", Purpose.ADVERTISING, "v1", None, 10)
        audience = audiences.segment_members(conn, page)
        horizon = audiences.feed_horizon(conn)
        feed = audiences.membership_changes(
            conn, None, Purpose.ADVERTISING, audiences.START, horizon, 10
        )
    assert current is not None
    assert current.assignment.segment_key == "champions"
    assert current.assignment.assigned_at == later
    assert current.assignment.profile is not None
    assert current.assignment.profile.consent_advertising is False
    assert current.purposes == {Purpose.PERSONALIZATION}  # the generated consent columns
    assert audience == []
    # the advertising feed: entered with the opt-in, exited with the withdrawal
    assert [(c.event, c.segment_key, c.cause) for c in feed] == [
        ("entered", "champions", "assignment"),
        ("exited", "champions", "consent"),
    ]
    engine.dispose()


@BOTH_PATHS
def test_a_customer_twice_in_one_batch_keeps_the_later_row(database_url: str, others: int) -> None:
    """The later row's segment; the profile fields each row sent, the later winning."""
    clear_tables(database_url)
    engine = create_engine(database_url)
    now = datetime.now(UTC)
    first = CustomerProfile(email_sha256="a" * 64, consent_advertising=True)
    second = CustomerProfile(consent_advertising=False, consent_personalization=False)
    batch = _with_others(
        [_row("d", "first", now, first), _row("e", "other", now), _row("d", "second", now, second)],
        others,
    )
    with engine.begin() as conn:
        store_batch(conn, batch, TEST_ID_HASH)
    with engine.connect() as conn:
        current = current_membership(conn, "d")
        assert current is not None
        assert current.assignment.segment_key == "second"
        assert current.assignment.profile == CustomerProfile(
            email_sha256="a" * 64, consent_advertising=False, consent_personalization=False
        )
        assert current.purposes == frozenset()
        assert len(customer_history(conn, "d", 10)) == 2
        assert current_membership(conn, "e") is not None
    engine.dispose()


@BOTH_PATHS
def test_awkward_text_survives_the_bulk_write(database_url: str, others: int) -> None:
    """COPY's text format gives backslashes and tabs meaning: they must arrive unchanged."""
    clear_tables(database_url)
    engine = create_engine(database_url)
    awkward_id = "back\\slash ü \\N"
    features = {"job": 'tab\there, back\\slash, "quoted", new\nline', "age": 41.0}
    row = AssignmentRow(awkward_id, 2, "loyal", "v1", 0.123456, 0.5, features, datetime.now(UTC))
    with engine.begin() as conn:
        store_batch(conn, _with_others([row], others), TEST_ID_HASH)
    with engine.connect() as conn:
        stored = customer_history(conn, awkward_id, 1)[0]
        current = current_membership(conn, awkward_id)
    assert stored.features == features
    assert stored.customer_id == awkward_id
    assert stored.distance == 0.123456
    assert current is not None
    assert current.assignment.customer_id == awkward_id
    engine.dispose()


def test_a_single_write_commits_alone_and_hands_its_connection_back_as_it_was(
    database_url: str,
) -> None:
    """A write of a few rows goes without BEGIN and COMMIT: its statements are one implicit
    transaction that the pipeline's end commits (app.store.driver.pipelined). It is stored; one
    that fails (a lock wait past the timeout) stores nothing; and the pooled connection comes
    back in transactions, so the next block on it still rolls back."""
    clear_tables(database_url)
    engine = create_engine(
        database_url, pool_size=1, max_overflow=0, connect_args={"options": "-c lock_timeout=200"}
    )
    store = Store(engine)
    writer = AssignmentWriter(store, TEST_ID_HASH)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    writer.write(AssignmentBatch.of_rows([_row("stored", "champions", at)]))
    with table_locked(database_url, "memberships"), pytest.raises(StoreFailed):
        writer.write(AssignmentBatch.of_rows([_row("failed", "champions", at)]))
    with pytest.raises(RuntimeError), store.transaction("assign") as conn:
        # the one pooled connection, after both writes
        store_batch(conn, AssignmentBatch.of_rows([_row("rolled-back", "loyal", at)]), TEST_ID_HASH)
        raise RuntimeError("the caller's block fails after the write")
    with engine.connect() as conn:
        assert current_membership(conn, "stored") is not None
        for customer in ("failed", "rolled-back"):
            assert current_membership(conn, customer) is None
            assert customer_history(conn, customer, 1) == []
    engine.dispose()
