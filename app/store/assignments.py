"""Storing assignments: the history, each customer's membership, and the change-feed events a
move causes, all in one merge. SQL lives only in app/store (through SQLAlchemy): history.py reads
what this writes, audiences.py reads audiences and the feed, erasure.py erases.

Functions take a Connection inside the caller's transaction and never commit themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import Connection, Table, text

from app.audience.profile import PROFILE_COLUMNS, CustomerProfile
from app.store.customer_locks import lock_statement
from app.store.driver import copy_in, copy_text, pipelined
from app.store.tables import (
    Assignment,
    Cause,
    ErasureAudit,
    ErasureTombstone,
    FeedEvent,
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
        # by index and column, one dict a customer: a batch of 10,000 is built on every write
        # (tuples per row and dict merges cost 40 ms of it)
        latest: dict[str, int] = {}
        assigned_at = self.assigned_at
        for index, customer_id in enumerate(self.customer_ids):
            kept = latest.get(customer_id)
            if kept is None or assigned_at[kept] <= assigned_at[index]:
                latest[customer_id] = index
        profiles: dict[str, dict[str, Any]] = {}
        if self.profiles is not None:
            merged: dict[str, CustomerProfile] = {}
            for index in sorted(range(len(self)), key=assigned_at.__getitem__):
                profile = self.profiles[index]
                if profile is not None:
                    customer_id = self.customer_ids[index]
                    merged[customer_id] = profile.merged_over(merged.get(customer_id))
            profiles = {
                customer_id: dict(zip(PROFILE_COLUMNS, profile.values(), strict=True))
                for customer_id, profile in merged.items()
            }
        empty = dict.fromkeys(PROFILE_COLUMNS)
        segment_ids, segment_keys = self.segment_ids, self.segment_keys
        versions, distances, confidences = self.model_versions, self.distances, self.confidences
        return [
            {
                # MEMBERSHIP_COLUMNS
                "customer_id": customer_id,
                "segment_id": segment_ids[index],
                "segment_key": segment_keys[index],
                "model_version": versions[index],
                "distance": distances[index],
                "confidence": confidences[index],
                "assigned_at": assigned_at[index],
                **profiles.get(customer_id, empty),
            }
            for customer_id, index in latest.items()
        ]


def store_batch(
    conn: Connection,
    batch: AssignmentBatch,
    id_hash: IdHash,
    cause: Cause = Cause.ASSIGNMENT,
    due: Mapping[str, datetime | None] | None = None,
) -> list[str]:
    """Append every assignment to the history and update each customer's membership, except for
    customers with an erasure tombstone (their rows are dropped). Moves to another segment are
    feed events with `cause` (an assignment, time passing, a model switch). With `due` (every
    customer of the batch: scored from their purchase aggregates), each one's next due time is
    recorded by the same statement (app.store.events.set_due's rule). Returns the erased
    customers' ids."""
    if not len(batch):
        return []
    members = batch.latest_memberships()
    for member in members:
        member["id_hash"] = id_hash(member["customer_id"])
    if due is not None:
        for member in members:
            moment = due[member["customer_id"]]
            member["due_at"] = moment.isoformat() if moment is not None else None
    statement = _MERGE_MEMBERSHIPS if due is None else _MERGE_MEMBERSHIPS_AND_DUE
    rows = orjson.dumps(members).decode()
    merge = (statement, {"rows": rows, "count": len(members), "cause": cause.value})
    # The customers' locks (app.store.customer_locks), held to the commit: nobody else writes
    # them meanwhile, so the moves are computed from memberships nobody is changing, and an
    # erasure is either seen (its tombstone) or sees this. Their own statement (the merge's
    # snapshot must be taken once they are held), in one round trip with the merge, and with
    # the history's INSERT when a few rows go that way.
    lock = lock_statement(batch.customer_ids)
    if len(batch) <= SMALL_BATCH:
        # a few rows (single requests committed together, a refresher's small chunk): one
        # INSERT costs less than setting up a COPY (measured: py-spy, single events at c=16)
        history = [dict(zip(HISTORY_COLUMNS, row, strict=True)) for row in batch.rows()]
        insert = (_INSERT_HISTORY, {"rows": orjson.dumps(history).decode()})
        suppressed = pipelined(conn, [insert, lock, merge])
    else:
        _copy_history(conn, batch)
        suppressed = pipelined(conn, [lock, merge])
    return [row[0] for row in suppressed]


# COPY for the history; for the memberships one INSERT … SELECT FROM json_to_recordset(one bound
# JSON parameter) … ON CONFLICT. Two round trips whatever the batch size, and both payloads are
# built in one pass (orjson for the JSON): psycopg's per-value adaptation of 10,000-row arrays
# cost more than the database's own work.
_COPY_HISTORY = f"COPY assignments ({', '.join(HISTORY_COLUMNS)}) FROM STDIN"
SMALL_BATCH = 64
_INSERT_HISTORY = text(
    f"""
    INSERT INTO assignments ({", ".join(HISTORY_COLUMNS)})
    SELECT {", ".join(HISTORY_COLUMNS)} FROM json_to_recordset(CAST(:rows AS json)) AS rows(
        customer_id varchar, segment_id integer, segment_key varchar, model_version varchar,
        distance float8, confidence float8, features json, assigned_at timestamptz)
    """  # noqa: S608 - constant table and column names; the rows are one bound parameter
)
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


# One statement, run holding the customers' locks:
# - customers with a tombstone are dropped, and the history this transaction copied for them
#   is deleted again (checked under the locks that erasure takes too, so an erasure either
#   committed before and is seen here, or comes after and deletes what this commits);
# - the memberships are upserted, keeping entered_at while the segment stays the same;
# - events are appended for each purpose's audience (the memberships' generated `advertising`
#   and `personalization` columns, app.store.tables): a customer who moved exits the old
#   segment in the feeds they were in and enters the new one in the feeds they are now in (with
#   the caller's cause: an assignment, time, a model switch); one
#   who stayed but whose consent changed enters or exits that purpose's feed (cause consent).
#   A re-assignment to the same segment is no event. This statement is the only writer of
#   assignment and consent events. Their feed position (stamp, id) is the columns' defaults
#   (app.store.tables.MembershipEvent), taken after the locks.
# Data-modifying CTEs all see the statement's starting snapshot, so `before` is the state the
# upsert changed.
def _merge_memberships(with_due: bool) -> str:
    columns = _INCOMING_COLUMNS + (", due_at timestamptz" if with_due else "")
    # the customers' aggregates' due times, set in the same statement (their rows are locked
    # already: by the event writer's insert, or the refresher's claim)
    due_update = (
        """,
    due AS (
        -- each row found by its key, then updated by its ctid (a join on customer_id let a
        -- plan kept from a small table scan the whole of it: see the comment below)
        UPDATE customer_activity AS a SET due_at = d.due_at, due_cause = NULL
        FROM (
            SELECT i.due_at, found.row_id FROM incoming AS i
            CROSS JOIN LATERAL (
                SELECT ctid AS row_id FROM customer_activity
                WHERE customer_activity.customer_id = i.customer_id OFFSET 0
            ) AS found
            WHERE i.customer_id NOT IN (SELECT customer_id FROM suppressed)
        ) AS d
        WHERE a.ctid = d.row_id
    )"""
        if with_due
        else ""
    )
    return f"""
    WITH incoming AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS rows({columns})
        LIMIT :count  -- the planner's row count: see app.store.events._RECORD
    ),
    -- Each customer's rows are found by index probes, whatever the planner believes of the
    -- tables' sizes: its plans are prepared and kept, and one made while the tables were small
    -- (a new database) scanned them whole in every write long after they had grown (half the
    -- throughput of single events within a minute). Hence the LATERAL … OFFSET 0 here (a
    -- probe per incoming row; the planner may not turn it into a join) and the ANY(ARRAY(…)).
    suppressed AS (
        SELECT incoming.customer_id FROM incoming
        CROSS JOIN LATERAL (
            SELECT 1 FROM erasure_tombstones AS t WHERE t.id_hash = incoming.id_hash
            LIMIT 1 OFFSET 0
        ) AS tombstone
    ),
    purged AS (
        -- the EXISTS is checked once, first: with nobody suppressed (nearly always) the
        -- history is not touched at all
        DELETE FROM assignments
        WHERE EXISTS (SELECT FROM suppressed)
          AND customer_id = ANY (ARRAY(SELECT customer_id FROM suppressed))
    ),
    -- MATERIALIZED: read once, by one join. Inlined into `moves` (PostgreSQL inlines a CTE
    -- used once) it became a nested loop rescanning `incoming` per row: 100 ms a batch of 1000.
    before AS MATERIALIZED (
        SELECT m.customer_id, m.segment_id, m.segment_key, m.advertising, m.personalization
        FROM incoming CROSS JOIN LATERAL (
            SELECT * FROM memberships WHERE memberships.customer_id = incoming.customer_id
            OFFSET 0
        ) AS m
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
                  advertising, personalization
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
               '{FeedEvent.EXITED}' AS event, model_version, confidence, assigned_at AS occurred_at,
               CAST(:cause AS varchar) AS cause, was_advertising AS advertising,
               was_personalization AS personalization, 0 AS position
        FROM moves WHERE known AND NOT stayed AND (was_advertising OR was_personalization)
        UNION ALL
        SELECT customer_id, segment_id, segment_key, '{FeedEvent.EXITED}', model_version, confidence,
               assigned_at, '{Cause.CONSENT}', was_advertising AND NOT advertising,
               was_personalization AND NOT personalization, 0
        FROM moves WHERE stayed AND ((was_advertising AND NOT advertising)
                                     OR (was_personalization AND NOT personalization))
        UNION ALL
        SELECT customer_id, segment_id, segment_key, '{FeedEvent.ENTERED}', model_version, confidence,
               assigned_at, '{Cause.CONSENT}', advertising AND NOT was_advertising,
               personalization AND NOT was_personalization, 1
        FROM moves WHERE stayed AND ((advertising AND NOT was_advertising)
                                     OR (personalization AND NOT was_personalization))
        UNION ALL
        SELECT customer_id, segment_id, segment_key, '{FeedEvent.ENTERED}', model_version, confidence,
               assigned_at, CAST(:cause AS varchar), advertising, personalization, 1
        FROM moves WHERE NOT stayed AND (advertising OR personalization)
    ) AS changes
    ORDER BY customer_id, position
    ){due_update}
    SELECT customer_id FROM suppressed
    """  # noqa: S608 - constant table and column names; the rows are one bound parameter


_MERGE_MEMBERSHIPS = text(_merge_memberships(with_due=False))
_MERGE_MEMBERSHIPS_AND_DUE = text(_merge_memberships(with_due=True))


def _copy_history(conn: Connection, batch: AssignmentBatch) -> None:
    stamps = {moment: moment.isoformat() for moment in set(batch.assigned_at)}
    history = "".join(
        f"{copy_text(c)}\t{i}\t{k}\t{v}\t{d!r}\t{f!r}\t{copy_text(orjson.dumps(x).decode())}\t{stamps[t]}\n"
        for c, i, k, v, d, f, x, t in batch.rows()
    )
    copy_in(conn, _COPY_HISTORY, history)
