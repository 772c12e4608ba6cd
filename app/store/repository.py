"""Reading and writing assignments: the only module that speaks SQL (through SQLAlchemy).

Functions take a Connection inside the caller's transaction and never commit themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import psycopg
from sqlalchemy import Connection, Table, delete, func, insert, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from app.store.tables import Assignment, Membership, MembershipEvent

assignments = cast(Table, Assignment.__table__)
memberships = cast(Table, Membership.__table__)
membership_events = cast(Table, MembershipEvent.__table__)

HISTORY_COLUMNS = (
    "customer_id",
    "segment_id",
    "segment_key",
    "model_version",
    "distance",
    "confidence",
    "features",
    "assigned_at",
)
MEMBERSHIP_COLUMNS = tuple(c for c in HISTORY_COLUMNS if c != "features")


@dataclass(frozen=True)
class AssignmentRow:
    """One stored (or storable) assignment, as the API reports it."""

    customer_id: str
    segment_id: int
    segment_key: str
    model_version: str
    distance: float
    confidence: float
    features: dict[str, Any]
    assigned_at: datetime


@dataclass(frozen=True)
class AssignmentBatch:
    """Assignments to store, as columns: a batch request, or single requests committed together."""

    customer_ids: Sequence[str]
    segment_ids: Sequence[int]
    segment_keys: Sequence[str]
    model_versions: Sequence[str]
    distances: Sequence[float]
    confidences: Sequence[float]
    features: Sequence[dict[str, Any]]
    assigned_at: Sequence[datetime]

    @classmethod
    def of_rows(cls, rows: Sequence[AssignmentRow]) -> AssignmentBatch:
        return cls(
            [r.customer_id for r in rows],
            [r.segment_id for r in rows],
            [r.segment_key for r in rows],
            [r.model_version for r in rows],
            [r.distance for r in rows],
            [r.confidence for r in rows],
            [r.features for r in rows],
            [r.assigned_at for r in rows],
        )

    def __len__(self) -> int:
        return len(self.customer_ids)

    def row(self, index: int) -> AssignmentRow:
        return AssignmentRow(
            self.customer_ids[index],
            self.segment_ids[index],
            self.segment_keys[index],
            self.model_versions[index],
            self.distances[index],
            self.confidences[index],
            self.features[index],
            self.assigned_at[index],
        )

    def rows(self) -> Iterator[tuple[str, int, str, str, float, float, dict[str, Any], datetime]]:
        """One tuple per assignment, in HISTORY_COLUMNS order."""
        return zip(
            self.customer_ids,
            self.segment_ids,
            self.segment_keys,
            self.model_versions,
            self.distances,
            self.confidences,
            self.features,
            self.assigned_at,
            strict=True,
        )

    def latest_memberships(self) -> list[tuple[Any, ...]]:
        """One row per customer (MEMBERSHIP_COLUMNS): their latest assignment here, later rows win ties."""
        latest: dict[str, tuple[Any, ...]] = {}
        for customer_id, segment_id, key, version, distance, confidence, _, moment in self.rows():
            kept = latest.get(customer_id)
            if kept is None or kept[6] <= moment:
                latest[customer_id] = (
                    customer_id,
                    segment_id,
                    key,
                    version,
                    distance,
                    confidence,
                    moment,
                )
        return list(latest.values())


def store_batch(conn: Connection, batch: AssignmentBatch) -> None:
    """Append every assignment to the history and update each customer's membership."""
    if not len(batch):
        return
    if conn.dialect.name == "postgresql":
        _store_postgresql(conn, batch)
    elif conn.dialect.name == "sqlite":
        _store_sqlite(conn, batch)
    else:
        raise RuntimeError(f"unsupported database {conn.dialect.name}: use PostgreSQL or SQLite")


# PostgreSQL: COPY for the history; for the memberships one INSERT … SELECT FROM
# json_to_recordset(one bound JSON parameter) … ON CONFLICT. Two round trips whatever the batch
# size, and both payloads are built in one pass (orjson for the JSON): psycopg's per-value
# adaptation of 10,000-row arrays cost more than the database's own work.
_COPY_HISTORY = f"COPY assignments ({', '.join(HISTORY_COLUMNS)}) FROM STDIN"
_INCOMING_COLUMNS = """customer_id varchar, segment_id integer, segment_key varchar,
    model_version varchar, distance float8, confidence float8, assigned_at timestamptz"""
_EVENT_COLUMNS = (
    "customer_id, segment_id, segment_key, event, model_version, confidence, occurred_at"
)
# One statement: read the memberships as they were, upsert, and append an "exited" event for a
# customer who left a segment and an "entered" one for a customer who joined one (a
# re-assignment to the same segment is no event). Data-modifying CTEs all see the statement's
# starting snapshot, so `before` is the state the upsert changed.
_MERGE_MEMBERSHIPS = text(
    f"""
    WITH incoming AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS rows({_INCOMING_COLUMNS})
    ),
    before AS (
        SELECT m.customer_id, m.segment_id, m.segment_key
        FROM memberships AS m JOIN incoming USING (customer_id)
    ),
    merged AS (
        INSERT INTO memberships ({", ".join(MEMBERSHIP_COLUMNS)}, entered_at)
        SELECT {", ".join(MEMBERSHIP_COLUMNS)}, assigned_at FROM incoming
        ON CONFLICT (customer_id) DO UPDATE SET
            {", ".join(f"{c} = excluded.{c}" for c in MEMBERSHIP_COLUMNS if c != "customer_id")},
            entered_at = CASE WHEN memberships.segment_key = excluded.segment_key
                THEN memberships.entered_at ELSE excluded.assigned_at END
        WHERE memberships.assigned_at <= excluded.assigned_at
        RETURNING customer_id, segment_id, segment_key, model_version, confidence, assigned_at
    )
    INSERT INTO membership_events ({_EVENT_COLUMNS})
    SELECT customer_id, segment_id, segment_key, event, model_version, confidence, occurred_at
    FROM (
        SELECT b.customer_id, b.segment_id, b.segment_key, 'exited' AS event,
               m.model_version, m.confidence, m.assigned_at AS occurred_at, 0 AS position
        FROM merged AS m JOIN before AS b USING (customer_id)
        WHERE b.segment_key <> m.segment_key
        UNION ALL
        SELECT m.customer_id, m.segment_id, m.segment_key, 'entered', m.model_version,
               m.confidence, m.assigned_at, 1
        FROM merged AS m LEFT JOIN before AS b USING (customer_id)
        WHERE b.customer_id IS NULL OR b.segment_key <> m.segment_key
    ) AS changes
    ORDER BY customer_id, position
    """  # noqa: S608 - constant table and column names; the rows are one bound parameter
)
# Any constant: the key of the lock that makes membership changes commit in event-id order.
MEMBERSHIP_LOCK = 7_291_104_416


def _store_postgresql(conn: Connection, batch: AssignmentBatch) -> None:
    driver = conn.connection.driver_connection
    assert driver is not None
    stamps = {moment: moment.isoformat() for moment in set(batch.assigned_at)}
    history = "".join(
        f"{_copy_text(c)}\t{i}\t{k}\t{v}\t{d!r}\t{f!r}\t{_copy_text(orjson.dumps(x).decode())}\t{stamps[t]}\n"
        for c, i, k, v, d, f, x, t in batch.rows()
    )
    try:
        with driver.cursor() as cursor, cursor.copy(_COPY_HISTORY) as copy:
            copy.write(history)
    except psycopg.Error as exc:
        # COPY bypasses SQLAlchemy's statement execution: wrap the driver's error the way
        # SQLAlchemy would (DataError, OperationalError …) so callers handle one family
        raise DBAPIError.instance(
            _COPY_HISTORY, None, exc, psycopg.Error, dialect=conn.dialect
        ) from exc
    members = [
        dict(zip(MEMBERSHIP_COLUMNS, row, strict=True)) for row in batch.latest_memberships()
    ]
    # Held to the commit: event ids are handed out in commit order, which is what lets a feed
    # reader page by id without missing an event a slower transaction commits later. The
    # history COPY above stays concurrent; only this merge is serialised.
    conn.execute(select(func.pg_advisory_xact_lock(MEMBERSHIP_LOCK)))
    conn.execute(_MERGE_MEMBERSHIPS, {"rows": orjson.dumps(members).decode()})


def _copy_text(value: str) -> str:
    """A text value in COPY's text format: backslash escaped (ids carry no tabs or newlines)."""
    return value.replace("\\", "\\\\") if "\\" in value else value


def _store_sqlite(conn: Connection, batch: AssignmentBatch) -> None:
    """The same rules in Python: SQLite serialises writers, so event ids follow commit order."""
    history = [dict(zip(HISTORY_COLUMNS, row, strict=True)) for row in batch.rows()]
    conn.execute(insert(assignments), history)
    latest = batch.latest_memberships()
    before = {
        row.customer_id: row
        for row in conn.execute(
            select(
                memberships.c.customer_id,
                memberships.c.segment_id,
                memberships.c.segment_key,
                memberships.c.assigned_at,
                memberships.c.entered_at,
            ).where(memberships.c.customer_id.in_([r[0] for r in latest]))
        )
    }
    merged, events = [], []
    for row in latest:
        values = dict(zip(MEMBERSHIP_COLUMNS, row, strict=True))
        old = before.get(values["customer_id"])
        if old is not None and _utc(old.assigned_at) > values["assigned_at"]:
            continue  # a later assignment is stored already (the upsert's rule)
        if old is not None and old.segment_key == values["segment_key"]:
            merged.append(values | {"entered_at": _utc(old.entered_at)})
            continue  # re-assigned to the same segment: no event
        merged.append(values | {"entered_at": values["assigned_at"]})
        change = {
            "model_version": values["model_version"],
            "confidence": values["confidence"],
            "occurred_at": values["assigned_at"],
        }
        if old is not None:
            events.append(
                change
                | {
                    "customer_id": old.customer_id,
                    "segment_id": old.segment_id,
                    "segment_key": old.segment_key,
                    "event": "exited",
                }
            )
        events.append(
            change
            | {
                "customer_id": values["customer_id"],
                "segment_id": values["segment_id"],
                "segment_key": values["segment_key"],
                "event": "entered",
            }
        )
    if merged:
        statement = sqlite.insert(memberships)
        upsert = statement.on_conflict_do_update(
            index_elements=[memberships.c.customer_id],
            set_={
                c: statement.excluded[c]
                for c in (*MEMBERSHIP_COLUMNS, "entered_at")
                if c != "customer_id"
            },
        )
        conn.execute(upsert, merged)
    if events:
        conn.execute(insert(membership_events), events)


def current_membership(conn: Connection, customer_id: str) -> AssignmentRow | None:
    query = select(*(memberships.c[name] for name in MEMBERSHIP_COLUMNS)).where(
        memberships.c.customer_id == customer_id
    )
    row = conn.execute(query).mappings().first()
    if row is None:
        return None
    return AssignmentRow(features={}, **{**row, "assigned_at": _utc(row["assigned_at"])})


def customer_history(conn: Connection, customer_id: str, limit: int) -> list[AssignmentRow]:
    """The customer's assignments, newest first (the order membership follows)."""
    query = (
        select(*(assignments.c[name] for name in HISTORY_COLUMNS))
        .where(assignments.c.customer_id == customer_id)
        .order_by(assignments.c.assigned_at.desc(), assignments.c.id.desc())
        .limit(limit)
    )
    return [
        AssignmentRow(**{**r, "assigned_at": _utc(r["assigned_at"])})
        for r in conn.execute(query).mappings()
    ]


def erase_customer(conn: Connection, customer_id: str) -> int:
    """Delete the customer's history and membership; returns how many rows went."""
    history = conn.execute(delete(assignments).where(assignments.c.customer_id == customer_id))
    current = conn.execute(delete(memberships).where(memberships.c.customer_id == customer_id))
    conn.execute(delete(membership_events).where(membership_events.c.customer_id == customer_id))
    return int(history.rowcount) + int(current.rowcount)


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


def membership_changes(
    conn: Connection, segment_key: str | None, after_id: int, limit: int
) -> list[MembershipChange]:
    """Entered/exited events after `after_id` in commit (id) order, of one segment or all."""
    query = select(membership_events).where(membership_events.c.id > after_id)
    if segment_key is not None:
        query = query.where(membership_events.c.segment_key == segment_key)
    query = query.order_by(membership_events.c.id).limit(limit)
    return [
        MembershipChange(**{**row, "occurred_at": _utc(row["occurred_at"])})
        for row in conn.execute(query).mappings()
    ]


def segment_members(conn: Connection, segment_key: str, after: str | None, limit: int) -> list[str]:
    """Customer ids currently in the segment, in id order, after `after` (keyset paging)."""
    query = select(memberships.c.customer_id).where(memberships.c.segment_key == segment_key)
    if after is not None:
        query = query.where(memberships.c.customer_id > after)
    query = query.order_by(memberships.c.customer_id).limit(limit)
    return list(conn.execute(query).scalars())


def recent_assignments(
    conn: Connection, model_version: str, window: int, since: datetime | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(segment key, features) of the model's latest `window` assignments (optionally only those
    since a time): the drift sample."""
    query = select(assignments.c.segment_key, assignments.c.features).where(
        assignments.c.model_version == model_version
    )
    if since is not None:
        query = query.where(assignments.c.assigned_at >= since)
    query = query.order_by(assignments.c.id.desc()).limit(window)
    return [(r[0], r[1]) for r in conn.execute(query)]


def assignments_between(
    conn: Connection, model_version: str, start: datetime, end: datetime
) -> list[tuple[datetime, str, dict[str, Any]]]:
    """(assigned_at, segment key, features) of the model's assignments in [start, end), oldest first."""
    query = (
        select(assignments.c.assigned_at, assignments.c.segment_key, assignments.c.features)
        .where(
            assignments.c.model_version == model_version,
            assignments.c.assigned_at >= start,
            assignments.c.assigned_at < end,
        )
        .order_by(assignments.c.assigned_at, assignments.c.id)
    )
    return [(_utc(r[0]), r[1], r[2]) for r in conn.execute(query)]


def ping(conn: Connection) -> None:
    conn.execute(text("SELECT 1"))


def schema_revision(conn: Connection) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    try:
        return cast(
            str | None, conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        )
    except (ProgrammingError, OperationalError):  # no alembic_version table: never migrated
        return None


def _utc(moment: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; we only ever store UTC
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def latest_features(conn: Connection, limit: int) -> list[tuple[str, dict[str, Any]]]:
    """(customer id, features) of each customer's current assignment, up to `limit` customers in
    id order: the population a model comparison scores."""
    query = (
        select(assignments.c.customer_id, assignments.c.features)
        .join(
            memberships,
            (memberships.c.customer_id == assignments.c.customer_id)
            & (memberships.c.assigned_at == assignments.c.assigned_at),
        )
        .order_by(assignments.c.customer_id, assignments.c.id.desc())
        .limit(limit)
    )
    latest: dict[str, dict[str, Any]] = {}
    for customer_id, features in conn.execute(query):
        latest.setdefault(customer_id, features)  # one batch may repeat a customer: keep the last
    return list(latest.items())
