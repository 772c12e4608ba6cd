"""Reading and writing assignments and memberships (with the change events a write causes).
SQL lives only in app/store (through SQLAlchemy): audiences.py reads audiences and the feed,
erasure.py erases.

Functions take a Connection inside the caller's transaction and never commit themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import psycopg
from sqlalchemy import Connection, Table, delete, func, insert, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from app.audience.consent import Purpose, allows
from app.audience.profile import PROFILE_COLUMNS, CustomerProfile
from app.store.tables import (
    Assignment,
    ErasureAudit,
    ErasureTombstone,
    Membership,
    MembershipEvent,
)

assignments = cast(Table, Assignment.__table__)
memberships = cast(Table, Membership.__table__)
membership_events = cast(Table, MembershipEvent.__table__)
tombstones = cast(Table, ErasureTombstone.__table__)
erasure_audit = cast(Table, ErasureAudit.__table__)
IdHash = Callable[[str], str]  # the keyed hash tombstones are recorded by (app.audience.erasure)

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
    profile: CustomerProfile | None = None  # hashed identifiers and consent sent with it


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
    # each customer's hashed identifiers and consent; None when no customer sent any
    profiles: Sequence[CustomerProfile | None] | None = None

    @classmethod
    def of_rows(cls, rows: Sequence[AssignmentRow]) -> AssignmentBatch:
        profiles = [r.profile for r in rows]
        return cls(
            [r.customer_id for r in rows],
            [r.segment_id for r in rows],
            [r.segment_key for r in rows],
            [r.model_version for r in rows],
            [r.distance for r in rows],
            [r.confidence for r in rows],
            [r.features for r in rows],
            [r.assigned_at for r in rows],
            profiles if any(p is not None for p in profiles) else None,
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
            self.profiles[index] if self.profiles is not None else None,
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

    def latest_memberships(self) -> list[dict[str, Any]]:
        """One row per customer (MEMBERSHIP_COLUMNS and PROFILE_COLUMNS): their latest assignment
        here, later rows winning ties. Profiles merge oldest first: a field the latest row left
        out comes from an earlier row that sent it."""
        latest: dict[str, tuple[Any, ...]] = {}
        for row in self.rows():
            kept = latest.get(row[0])
            if kept is None or kept[7] <= row[7]:
                latest[row[0]] = row
        profiles: dict[str, CustomerProfile] = {}
        if self.profiles is not None:
            for index in sorted(range(len(self)), key=self.assigned_at.__getitem__):
                profile = self.profiles[index]
                if profile is not None:
                    customer_id = self.customer_ids[index]
                    profiles[customer_id] = profile.merged_over(profiles.get(customer_id))
        empty = CustomerProfile()
        return [
            dict(zip(MEMBERSHIP_COLUMNS, (*row[:6], row[7]), strict=True))
            | dict(zip(PROFILE_COLUMNS, profiles.get(customer_id, empty).values(), strict=True))
            for customer_id, row in latest.items()
        ]


def store_batch(conn: Connection, batch: AssignmentBatch, id_hash: IdHash) -> list[str]:
    """Append every assignment to the history and update each customer's membership, except for
    customers with an erasure tombstone (their rows are dropped). Returns those customers' ids."""
    if not len(batch):
        return []
    members = batch.latest_memberships()
    for member in members:
        member["id_hash"] = id_hash(member["customer_id"])
    if conn.dialect.name == "postgresql":
        return _store_postgresql(conn, batch, members)
    if conn.dialect.name == "sqlite":
        return _store_sqlite(conn, batch, members)
    raise RuntimeError(f"unsupported database {conn.dialect.name}: use PostgreSQL or SQLite")


# PostgreSQL: COPY for the history; for the memberships one INSERT … SELECT FROM
# json_to_recordset(one bound JSON parameter) … ON CONFLICT. Two round trips whatever the batch
# size, and both payloads are built in one pass (orjson for the JSON): psycopg's per-value
# adaptation of 10,000-row arrays cost more than the database's own work.
_COPY_HISTORY = f"COPY assignments ({', '.join(HISTORY_COLUMNS)}) FROM STDIN"
_INCOMING_COLUMNS = """customer_id varchar, segment_id integer, segment_key varchar,
    model_version varchar, distance float8, confidence float8, assigned_at timestamptz,
    email_sha256 varchar, phone_sha256 varchar, phone_digits_sha256 varchar,
    consent_personalization boolean, consent_advertising boolean, id_hash varchar"""
_EVENT_COLUMNS = """customer_id, segment_id, segment_key, event, model_version, confidence,
    occurred_at, cause, advertising, personalization"""
_NEWER = "memberships.assigned_at <= excluded.assigned_at"
_MEMBERSHIP_UPDATE = ",\n".join(
    # the segment follows the latest assignment (a late-committing older one changes nothing)
    [
        f"{c} = CASE WHEN {_NEWER} THEN excluded.{c} ELSE memberships.{c} END"
        for c in MEMBERSHIP_COLUMNS
        if c != "customer_id"
    ]
    # consent and hashes follow the last word received, whatever its assignment's time (a
    # withdrawal must never be lost); a flag or hash not sent keeps the one sent before
    + [f"{c} = COALESCE(excluded.{c}, memberships.{c})" for c in PROFILE_COLUMNS]
)
# One statement, run holding MEMBERSHIP_LOCK:
# - customers with a tombstone are dropped, and the history this transaction copied for them
#   is deleted again (checked under the lock that erasure takes too, so an erasure either
#   committed before and is seen here, or comes after and deletes what this commits);
# - the memberships are upserted, keeping entered_at while the segment stays the same;
# - events are appended for each purpose's audience (see app/audience/consent.py): a customer
#   who moved exits the old segment in the feeds they were in and enters the new one in the
#   feeds they are now in; one who stayed but whose consent changed enters or exits that
#   purpose's feed (cause 'consent'). A re-assignment to the same segment is no event.
# Data-modifying CTEs all see the statement's starting snapshot, so `before` is the state the
# upsert changed.
_MERGE_MEMBERSHIPS = text(
    f"""
    WITH incoming AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS rows({_INCOMING_COLUMNS})
    ),
    suppressed AS (
        SELECT incoming.customer_id FROM incoming JOIN erasure_tombstones USING (id_hash)
    ),
    purged AS (
        -- = ANY(ARRAY(…)): one index probe per suppressed id. A plain IN (subquery) let the
        -- planner hash-join against a scan of the whole history, which made every batch
        -- ~5x slower (bench/audience.py) although nobody was suppressed.
        DELETE FROM assignments
        WHERE customer_id = ANY (ARRAY(SELECT customer_id FROM suppressed))
    ),
    -- MATERIALIZED: read once, by one join. Inlined into `moves` (PostgreSQL inlines a CTE
    -- used once) it became a nested loop rescanning `incoming` per row: 100 ms a batch of 1000.
    before AS MATERIALIZED (
        SELECT m.customer_id, m.segment_id, m.segment_key,
               COALESCE(m.consent_advertising, false) AS advertising,
               COALESCE(m.consent_personalization, true) AS personalization
        FROM memberships AS m JOIN incoming USING (customer_id)
    ),
    merged AS (
        INSERT INTO memberships ({", ".join(MEMBERSHIP_COLUMNS)}, entered_at,
                                 {", ".join(PROFILE_COLUMNS)})
        SELECT {", ".join(MEMBERSHIP_COLUMNS)}, assigned_at, {", ".join(PROFILE_COLUMNS)}
        FROM incoming WHERE customer_id NOT IN (SELECT customer_id FROM suppressed)
        ON CONFLICT (customer_id) DO UPDATE SET
            {_MEMBERSHIP_UPDATE},
            entered_at = CASE WHEN {_NEWER} AND memberships.segment_key <> excluded.segment_key
                THEN excluded.assigned_at ELSE memberships.entered_at END
        RETURNING customer_id, segment_id, segment_key, model_version, confidence, assigned_at,
                  COALESCE(consent_advertising, false) AS advertising,
                  COALESCE(consent_personalization, true) AS personalization
    ),
    moves AS (
        SELECT m.*, b.customer_id IS NOT NULL AS known, b.segment_id AS old_segment_id,
               b.segment_key AS old_segment_key,
               COALESCE(b.segment_key = m.segment_key, false) AS stayed,
               COALESCE(b.advertising, false) AS was_advertising,
               COALESCE(b.personalization, false) AS was_personalization
        FROM merged AS m LEFT JOIN before AS b USING (customer_id)
    ),
    recorded AS (
    INSERT INTO membership_events ({_EVENT_COLUMNS})
    SELECT customer_id, segment_id, segment_key, event, model_version, confidence, occurred_at,
           cause, advertising, personalization
    FROM (
        SELECT customer_id, old_segment_id AS segment_id, old_segment_key AS segment_key,
               'exited' AS event, model_version, confidence, assigned_at AS occurred_at,
               'assignment' AS cause, was_advertising AS advertising,
               was_personalization AS personalization, 0 AS position
        FROM moves WHERE known AND NOT stayed AND (was_advertising OR was_personalization)
        UNION ALL
        SELECT customer_id, segment_id, segment_key, 'exited', model_version, confidence,
               assigned_at, 'consent', was_advertising AND NOT advertising,
               was_personalization AND NOT personalization, 0
        FROM moves WHERE stayed AND ((was_advertising AND NOT advertising)
                                     OR (was_personalization AND NOT personalization))
        UNION ALL
        SELECT customer_id, segment_id, segment_key, 'entered', model_version, confidence,
               assigned_at, 'consent', advertising AND NOT was_advertising,
               personalization AND NOT was_personalization, 1
        FROM moves WHERE stayed AND ((advertising AND NOT was_advertising)
                                     OR (personalization AND NOT was_personalization))
        UNION ALL
        SELECT customer_id, segment_id, segment_key, 'entered', model_version, confidence,
               assigned_at, 'assignment', advertising, personalization, 1
        FROM moves WHERE NOT stayed AND (advertising OR personalization)
    ) AS changes
    ORDER BY customer_id, position
    )
    SELECT customer_id FROM suppressed
    """  # noqa: S608 - constant table and column names; the rows are one bound parameter
)
# Any constant: the key of the lock that makes membership changes commit in event-id order.
MEMBERSHIP_LOCK = 7_291_104_416


def _store_postgresql(
    conn: Connection, batch: AssignmentBatch, members: list[dict[str, Any]]
) -> list[str]:
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
    rows = orjson.dumps(members).decode()
    # Held to the commit: event ids are handed out in commit order, which is what lets a feed
    # reader page by id without missing an event a slower transaction commits later. The
    # history COPY above stays concurrent; only this merge is serialised.
    lock_memberships(conn)
    return list(conn.execute(_MERGE_MEMBERSHIPS, {"rows": rows}).scalars())


def _copy_text(value: str) -> str:
    """A text value in COPY's text format: backslash escaped (ids carry no tabs or newlines)."""
    return value.replace("\\", "\\\\") if "\\" in value else value


def _store_sqlite(
    conn: Connection, batch: AssignmentBatch, members: list[dict[str, Any]]
) -> list[str]:
    """The same rules in Python: SQLite serialises writers, so event ids follow commit order.

    The history goes in first: that INSERT opens the transaction and takes SQLite's write lock,
    so the tombstone check after it cannot miss an erasure committing meanwhile (the same
    reason the PostgreSQL merge checks under the advisory lock)."""
    history = [dict(zip(HISTORY_COLUMNS, row, strict=True)) for row in batch.rows()]
    conn.execute(insert(assignments), history)
    suppressed = set(
        conn.execute(
            select(tombstones.c.id_hash).where(
                tombstones.c.id_hash.in_([m["id_hash"] for m in members])
            )
        ).scalars()
    )
    dropped = {m["customer_id"] for m in members if m["id_hash"] in suppressed}
    if dropped:
        conn.execute(delete(assignments).where(assignments.c.customer_id.in_(dropped)))
    members = [m for m in members if m["customer_id"] not in dropped]
    before = {
        row.customer_id: row
        for row in conn.execute(
            select(memberships).where(
                memberships.c.customer_id.in_([m["customer_id"] for m in members])
            )
        )
    }
    merged, events = [], []
    for incoming in members:
        values = {k: v for k, v in incoming.items() if k != "id_hash"}
        old = before.get(values["customer_id"])
        if old is not None and as_utc(old.assigned_at) > values["assigned_at"]:
            # a later assignment is stored already: it keeps the segment (the upsert's rule)
            values |= {c: getattr(old, c) for c in MEMBERSHIP_COLUMNS}
            values["assigned_at"] = as_utc(old.assigned_at)
        for column in PROFILE_COLUMNS:  # a flag or hash not sent keeps the one sent before
            if values[column] is None and old is not None:
                values[column] = getattr(old, column)
        stayed = old is not None and old.segment_key == values["segment_key"]
        values["entered_at"] = as_utc(old.entered_at) if stayed and old else values["assigned_at"]
        merged.append(values)
        events.extend(_events(old, values, stayed))
    if merged:
        statement = sqlite.insert(memberships)
        upsert = statement.on_conflict_do_update(
            index_elements=[memberships.c.customer_id],
            set_={c: statement.excluded[c] for c in merged[0] if c != "customer_id"},
        )
        conn.execute(upsert, merged)
    if events:
        conn.execute(insert(membership_events), events)
    return sorted(dropped)


def _events(old: Any, new: dict[str, Any], stayed: bool) -> list[dict[str, Any]]:
    """The change-feed events of one membership update (the rules of _MERGE_MEMBERSHIPS)."""
    now = {p.value: allows(p, new[f"consent_{p.value}"]) for p in Purpose}
    was = {
        p.value: old is not None and allows(p, getattr(old, f"consent_{p.value}")) for p in Purpose
    }
    change = {
        "model_version": new["model_version"],
        "confidence": new["confidence"],
        "occurred_at": new["assigned_at"],
    }
    here = {k: new[k] for k in ("customer_id", "segment_id", "segment_key")}
    events = []
    if stayed:
        left = {p: was[p] and not now[p] for p in was}
        joined = {p: now[p] and not was[p] for p in was}
        if any(left.values()):
            events.append(here | change | {"event": "exited", "cause": "consent"} | left)
        if any(joined.values()):
            events.append(here | change | {"event": "entered", "cause": "consent"} | joined)
        return events
    if old is not None and any(was.values()):
        there = {
            "customer_id": old.customer_id,
            "segment_id": old.segment_id,
            "segment_key": old.segment_key,
        }
        events.append(there | change | {"event": "exited", "cause": "assignment"} | was)
    if any(now.values()):
        events.append(here | change | {"event": "entered", "cause": "assignment"} | now)
    return events


def current_membership(conn: Connection, customer_id: str) -> AssignmentRow | None:
    """The customer's membership, with their hashed identifiers and consent as the profile."""
    query = select(
        *(memberships.c[name] for name in (*MEMBERSHIP_COLUMNS, *PROFILE_COLUMNS))
    ).where(memberships.c.customer_id == customer_id)
    row = conn.execute(query).mappings().first()
    if row is None:
        return None
    values = {name: row[name] for name in MEMBERSHIP_COLUMNS}
    return AssignmentRow(
        features={},
        profile=CustomerProfile(*(row[name] for name in PROFILE_COLUMNS)),
        **{**values, "assigned_at": as_utc(row["assigned_at"])},
    )


def customer_history(conn: Connection, customer_id: str, limit: int) -> list[AssignmentRow]:
    """The customer's assignments, newest first (the order membership follows)."""
    query = (
        select(*(assignments.c[name] for name in HISTORY_COLUMNS))
        .where(assignments.c.customer_id == customer_id)
        .order_by(assignments.c.assigned_at.desc(), assignments.c.id.desc())
        .limit(limit)
    )
    return [
        AssignmentRow(**{**r, "assigned_at": as_utc(r["assigned_at"])})
        for r in conn.execute(query).mappings()
    ]


def lock_memberships(conn: Connection) -> None:
    """The lock membership merges hold (PostgreSQL; SQLite serialises writers anyway)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(MEMBERSHIP_LOCK)))


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
    return [(as_utc(r[0]), r[1], r[2]) for r in conn.execute(query)]


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


def as_utc(moment: datetime) -> datetime:
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
