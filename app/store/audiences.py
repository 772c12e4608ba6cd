"""Reading audiences: a segment's members under a consent purpose (paged or streamed from one
snapshot) and the membership change feed.

Functions take a Connection inside the caller's transaction and never commit themselves."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, true

from app.audience.consent import Purpose
from app.store.repository import (
    as_utc,
    membership_events,
    memberships,
)


@dataclass(frozen=True)
class MembershipChange:
    id: int
    customer_id: str
    segment_id: int
    segment_key: str
    event: str
    model_version: str
    confidence: float
    occurred_at: datetime
    cause: str


_CHANGE_COLUMNS = tuple(field.name for field in fields(MembershipChange))


def membership_changes(
    conn: Connection, segment_key: str | None, purpose: Purpose, after_id: int, limit: int
) -> list[MembershipChange]:
    """Entered/exited events of a purpose's audiences after `after_id` in commit (id) order, of
    one segment or all."""
    query = select(*(membership_events.c[name] for name in _CHANGE_COLUMNS)).where(
        membership_events.c.id > after_id,
        # `= true`, not IS TRUE: PostgreSQL then uses the partial index of advertising events
        membership_events.c[purpose.value] == true(),
    )
    if segment_key is not None:
        query = query.where(membership_events.c.segment_key == segment_key)
    query = query.order_by(membership_events.c.id).limit(limit)
    return [
        MembershipChange(**{**row, "occurred_at": as_utc(row["occurred_at"])})
        for row in conn.execute(query).mappings()
    ]


def begin_snapshot(conn: Connection) -> None:
    """Make the transaction (not yet used) read one snapshot throughout: PostgreSQL's REPEATABLE
    READ. SQLite's read transaction is one snapshot already."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # a client that stops reading must not hold a snapshot (and vacuum) back for long:
        # the server ends the session, and the pool replaces the connection
        conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = '60s'")
    elif conn.dialect.name == "sqlite":
        # pysqlite runs a SELECT outside any transaction, each its own snapshot: BEGIN makes
        # the feed position and the rows read one snapshot (WAL keeps writers going meanwhile)
        conn.exec_driver_sql("BEGIN")


def audience_size(conn: Connection, segment_key: str, purpose: Purpose) -> int:
    query = select(func.count()).select_from(memberships).where(_audience(segment_key, purpose))
    return int(conn.execute(query).scalar_one())


def feed_position(conn: Connection) -> int:
    """The id of the newest event this transaction sees (0 when none). Ids follow commit order,
    so every event up to it is visible: a consumer can follow the feed from here."""
    return int(
        conn.execute(select(func.coalesce(func.max(membership_events.c.id), 0))).scalar_one()
    )


def _audience(segment_key: str, purpose: Purpose) -> Any:
    """The memberships in a purpose's audience of the segment (the rules of app.audience.consent)."""
    consent = memberships.c[f"consent_{purpose.value}"]
    allowed = consent.is_(True) if purpose is Purpose.ADVERTISING else consent.is_not(False)
    return (memberships.c.segment_key == segment_key) & allowed


def segment_members(
    conn: Connection, segment_key: str, purpose: Purpose, after: str | None, limit: int
) -> list[MemberRow]:
    """Members of a purpose's audience of the segment, in id order, after `after` (keyset paging)."""
    query = select(*(memberships.c[name] for name in MEMBER_COLUMNS)).where(
        _audience(segment_key, purpose)
    )
    if after is not None:
        query = query.where(memberships.c.customer_id > after)
    query = query.order_by(memberships.c.customer_id).limit(limit)
    return [_member(row) for row in conn.execute(query)]


def stream_members(
    conn: Connection, segment_key: str, purpose: Purpose, chunk: int
) -> Generator[list[MemberRow], None, None]:
    """The whole audience in id order, `chunk` rows at a time, in constant memory: PostgreSQL
    hands rows over through a server-side cursor (psycopg's named cursor)."""
    query = (
        select(*(memberships.c[name] for name in MEMBER_COLUMNS))
        .where(_audience(segment_key, purpose))
        .order_by(memberships.c.customer_id)
    )
    # yield_per: stream_results (a named cursor on psycopg) fetching `chunk` rows at a time
    result = conn.execution_options(yield_per=chunk).execute(query)
    try:
        for rows in result.partitions():
            yield [_member(row) for row in rows]
    finally:
        result.close()  # an abandoned export (client gone) closes its cursor at once


@dataclass(frozen=True)
class MemberRow:
    customer_id: str
    entered_at: datetime
    email_sha256: str | None
    phone_sha256: str | None
    phone_digits_sha256: str | None


MEMBER_COLUMNS = tuple(field.name for field in fields(MemberRow))


def _member(row: Any) -> MemberRow:
    return MemberRow(row[0], as_utc(row[1]), row[2], row[3], row[4])
