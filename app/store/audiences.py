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
from app.audience.formats import MEMBER_COLUMNS, MemberRow
from app.store.assignments import membership_events, memberships
from app.store.tables import Cause, FeedEvent


@dataclass(frozen=True)
class MembershipChange:
    id: int
    customer_id: str
    segment_id: int
    segment_key: str
    event: FeedEvent
    model_version: str
    confidence: float
    occurred_at: datetime
    cause: Cause


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
        MembershipChange(**{**row, "event": FeedEvent(row["event"]), "cause": Cause(row["cause"])})
        for row in conn.execute(query).mappings()
    ]


def begin_snapshot(conn: Connection) -> None:
    """Make the transaction (not yet used) read one snapshot throughout: REPEATABLE READ."""
    conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
    # a client that stops reading must not hold a snapshot (and vacuum) back for long: the
    # server ends the session, and the pool replaces the connection
    conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = '60s'")


def audience_size(conn: Connection, segment_key: str, purpose: Purpose, model_version: str) -> int:
    query = (
        select(func.count())
        .select_from(memberships)
        .where(_audience(segment_key, purpose, model_version))
    )
    return int(conn.execute(query).scalar_one())


def feed_position(conn: Connection) -> int:
    """The id of the newest event this transaction sees (0 when none). Ids follow commit order,
    so every event up to it is visible: a consumer can follow the feed from here."""
    return int(
        conn.execute(select(func.coalesce(func.max(membership_events.c.id), 0))).scalar_one()
    )


def _audience(segment_key: str, purpose: Purpose, model_version: str) -> Any:
    """The memberships in a purpose's audience of the model's segment: the generated consent
    column, and only memberships that model made (after a model switch, customers not yet
    re-scored are in no audience of the new model: a key of the old one is not the new one's)."""
    # `= true`, not IS TRUE: PostgreSQL then uses the partial index of advertising members
    return (
        (memberships.c.segment_key == segment_key)
        & (memberships.c[purpose.value] == true())
        & (memberships.c.model_version == model_version)
    )


def segment_members(
    conn: Connection,
    segment_key: str,
    purpose: Purpose,
    model_version: str,
    after: str | None,
    limit: int,
) -> list[MemberRow]:
    """Members of a purpose's audience of the segment, in id order, after `after` (keyset paging)."""
    query = select(*(memberships.c[name] for name in MEMBER_COLUMNS)).where(
        _audience(segment_key, purpose, model_version)
    )
    if after is not None:
        query = query.where(memberships.c.customer_id > after)
    query = query.order_by(memberships.c.customer_id).limit(limit)
    return [_member(row) for row in conn.execute(query)]


def stream_members(
    conn: Connection, segment_key: str, purpose: Purpose, model_version: str, chunk: int
) -> Generator[list[MemberRow], None, None]:
    """The whole audience in id order, `chunk` rows at a time, in constant memory: PostgreSQL
    hands rows over through a server-side cursor (psycopg's named cursor)."""
    query = (
        select(*(memberships.c[name] for name in MEMBER_COLUMNS))
        .where(_audience(segment_key, purpose, model_version))
        .order_by(memberships.c.customer_id)
    )
    # yield_per: stream_results (a named cursor on psycopg) fetching `chunk` rows at a time
    result = conn.execution_options(yield_per=chunk).execute(query)
    try:
        for rows in result.partitions():
            yield [_member(row) for row in rows]
    finally:
        result.close()  # an abandoned export (client gone) closes its cursor at once


def _member(row: Any) -> MemberRow:
    return MemberRow(*row)
