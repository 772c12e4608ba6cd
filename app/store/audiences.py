"""Reading audiences: a segment's members under a consent purpose (paged or streamed from one
snapshot) and the membership change feed.

Functions take a Connection inside the caller's transaction and never commit themselves."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, func, literal, select, text, true, tuple_

from app.audience.consent import Purpose
from app.audience.formats import MEMBER_COLUMNS, MemberRow
from app.store.assignments import membership_events, memberships
from app.store.tables import Cause, FeedEvent
from app.store.transaction_ids import TransactionId, current_snapshot, oldest_running


@dataclass(frozen=True)
class FeedPosition:
    """Where a feed reader stands: past the event (stamp, event_id) in feed order (see
    app.store.transaction_ids). With `snapshot` (pg_snapshot's text, xmin:xmax:running), the
    events that snapshot saw are behind it too: an export's position, whose snapshot saw some
    events of transactions younger than its oldest running one."""

    stamp: int
    event_id: int
    snapshot: str | None = None

    def after(self, stamp: int, event_id: int) -> FeedPosition:
        """The position past an event handed out from here."""
        return FeedPosition(stamp, event_id, self.snapshot)._settled()

    def at_least(self, horizon: int) -> FeedPosition:
        """This position, or the one past every event stamped before `horizon` (the oldest
        transaction running when a read found nothing more): whichever is further."""
        if (horizon - 1, LAST_EVENT_ID) <= (self.stamp, self.event_id):
            return self
        return FeedPosition(horizon - 1, LAST_EVENT_ID, self.snapshot)._settled()

    def _settled(self) -> FeedPosition:
        # every event the snapshot saw was stamped at most its xmax: past that, it has no use
        if self.snapshot is not None:
            xmax = int(self.snapshot.split(":")[1])
            if (self.stamp, self.event_id) >= (xmax, LAST_EVENT_ID):
                return FeedPosition(self.stamp, self.event_id)
        return self


LAST_EVENT_ID = 2**63 - 1  # the id column's largest value: "past every event of that stamp"
START = FeedPosition(0, 0)


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
    stamp: int


_CHANGE_COLUMNS = tuple(field.name for field in fields(MembershipChange))


def feed_horizon(conn: Connection) -> int:
    """The oldest transaction running now: every event stamped below it is committed (or never
    will be), so a feed may hand it out. Read before the events: it is then conservative."""
    return int(conn.execute(select(oldest_running())).scalar_one())


def membership_changes(
    conn: Connection,
    segment_key: str | None,
    purpose: Purpose,
    after: FeedPosition,
    horizon: int,
    limit: int,
) -> list[MembershipChange]:
    """Entered/exited events of a purpose's audiences past `after` in feed order, of one segment
    or all, stamped below `horizon` (feed_horizon)."""
    events = membership_events.c
    query = select(*(events[name] for name in _CHANGE_COLUMNS)).where(
        tuple_(events.stamp, events.id)
        > tuple_(literal(after.stamp, TransactionId()), literal(after.event_id)),
        events.stamp < literal(horizon, TransactionId()),
        # `= true`, not IS TRUE: PostgreSQL then uses the partial index of advertising events
        events[purpose.value] == true(),
    )
    if after.snapshot is not None:
        query = query.where(
            text(
                "NOT pg_visible_in_snapshot(membership_events.tx, CAST(:seen AS pg_snapshot))"
            ).bindparams(seen=after.snapshot)
        )
    if segment_key is not None:
        query = query.where(events.segment_key == segment_key)
    query = query.order_by(events.stamp, events.id).limit(limit)
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


def feed_position(conn: Connection) -> FeedPosition:
    """The feed position of this transaction's snapshot: every event it sees is behind it, every
    event it does not see is ahead of it, so a consumer of an export taken in this snapshot can
    follow the feed from exactly there."""
    snapshot = str(conn.execute(select(current_snapshot())).scalar_one())
    oldest = int(snapshot.split(":")[0])
    # everything stamped below the snapshot's xmin it sees; younger events it saw, it names
    return FeedPosition(oldest - 1, LAST_EVENT_ID, snapshot)


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


@dataclass(frozen=True)
class AudiencePage:
    """Which page of an audience: a purpose's members of a model's segment, in id order, after
    `after` (keyset paging), at most `limit`."""

    segment_key: str
    purpose: Purpose
    model_version: str
    after: str | None
    limit: int

    def query(self, *columns: Any) -> Select[Any]:
        query = select(*columns).where(
            _audience(self.segment_key, self.purpose, self.model_version)
        )
        if self.after is not None:
            query = query.where(memberships.c.customer_id > self.after)
        return query.order_by(memberships.c.customer_id).limit(self.limit)


def segment_members(conn: Connection, page: AudiencePage) -> list[MemberRow]:
    """The page's members, with their entry times and hashed identifiers."""
    query = page.query(*(memberships.c[name] for name in MEMBER_COLUMNS))
    return [_member(row) for row in conn.execute(query)]


def segment_member_ids(conn: Connection, page: AudiencePage) -> list[str]:
    """The page's members' ids alone: what a page without identifiers holds (converting each
    member's entry time and hashes cost more than reading them)."""
    return list(conn.execute(page.query(memberships.c.customer_id)).scalars())


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
