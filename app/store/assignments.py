"""Storing assignments: the history, each customer's membership, and the change-feed events a
move causes, all in one merge. SQL lives only in app/store (through SQLAlchemy): history.py reads
what this writes, audiences.py reads audiences and the feed, erasure.py erases.

Functions take a Connection inside the caller's transaction and never commit themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, cast

import orjson
from sqlalchemy import Connection, Table

from app.audience.profile import PROFILE_COLUMNS, CustomerProfile
from app.store.customer_locks import lock_statement
from app.store.driver import NULL, Statement, copy_text, copying, pipelined
from app.store.membership_merge import merge_few, merge_many, stage_members
from app.store.tables import (
    HISTORY_COLUMNS,
    Assignment,
    Cause,
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

    def latest(self) -> list[tuple[str, int, CustomerProfile | None]]:
        """One (customer id, index, profile) per customer: the index of their latest assignment
        here, later rows winning ties, and the profiles they sent merged oldest first (a field
        the latest row left out comes from an earlier row that sent it; None: none sent)."""
        latest: dict[str, int] = {}
        assigned_at = self.assigned_at
        for index, customer_id in enumerate(self.customer_ids):
            kept = latest.get(customer_id)
            if kept is None or assigned_at[kept] <= assigned_at[index]:
                latest[customer_id] = index
        merged: dict[str, CustomerProfile] = {}
        if self.profiles is not None:
            for index in sorted(range(len(self)), key=assigned_at.__getitem__):
                profile = self.profiles[index]
                if profile is not None:
                    customer_id = self.customer_ids[index]
                    merged[customer_id] = profile.merged_over(merged.get(customer_id))
        return [
            (customer_id, index, merged.get(customer_id)) for customer_id, index in latest.items()
        ]

    def latest_memberships(self) -> list[dict[str, Any]]:
        """latest(), one dict a customer (MEMBERSHIP_COLUMNS and PROFILE_COLUMNS): the JSON a few
        rows are merged from (a batch's are COPYed: _members_text)."""
        empty = (None,) * len(PROFILE_COLUMNS)
        segment_ids, segment_keys = self.segment_ids, self.segment_keys
        versions, distances, confidences = self.model_versions, self.distances, self.confidences
        assigned_at = self.assigned_at
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
                **dict(
                    zip(
                        PROFILE_COLUMNS,
                        profile.values() if profile is not None else empty,
                        strict=True,
                    )
                ),
            }
            for customer_id, index, profile in self.latest()
        ]


def store_batch(
    conn: Connection,
    batch: AssignmentBatch,
    id_hash: IdHash,
    cause: Cause = Cause.ASSIGNMENT,
    due: Mapping[str, datetime | None] | None = None,
    *,
    commit: bool = False,
) -> list[str]:
    """Append every assignment to the history and update each customer's membership, except for
    customers with an erasure tombstone (their rows are dropped). Moves to another segment are
    feed events with `cause` (an assignment, time passing, a model switch). With `due` (every
    customer of the batch: scored from their purchase aggregates), each one's next due time is
    recorded by the same statement (app.store.events.set_due's rule). With `commit`, the
    transaction is committed in the same round trip (the caller does nothing after it). Returns
    the erased customers' ids."""
    if not len(batch):
        return []
    if len(batch) <= SMALL_BATCH:
        merge = few_rows_write(batch, id_hash, cause, due, committing=commit)
    else:
        # a batch: its history COPYed, a chunk at a time as it is built (the server takes in
        # one while the next is built), then, while the server takes in the last, its
        # memberships' rows are built; they are COPYed into the staging table the merge reads
        with copying(conn, _COPY_HISTORY) as history_copy:
            for chunk in history_chunks(batch):
                history_copy.write(chunk)
            staged = _members_text(batch, id_hash, due)
        stage_members(conn, staged)
        merge = merge_many(_locks(batch), cause, with_due=due is not None, committing=commit)
    suppressed = pipelined(conn, merge, commit=commit, rows_of=MERGE)
    return [row[0] for row in suppressed]


def few_rows_write(
    batch: AssignmentBatch,
    id_hash: IdHash,
    cause: Cause = Cause.ASSIGNMENT,
    due: Mapping[str, datetime | None] | None = None,
    *,
    committing: bool,
) -> list[Statement]:
    """store_batch's statements for at most SMALL_BATCH rows (single requests committed
    together, a refresher's small chunk), for one pipeline: the memberships and the history go
    with the merge as JSON (less than setting up a COPY). The rows at index MERGE are the
    erased customers' ids. `committing`: nothing follows them but the commit."""
    members = batch.latest_memberships()
    for member in members:
        member["id_hash"] = id_hash(member["customer_id"])
    if due is not None:
        for member in members:
            moment = due[member["customer_id"]]
            member["due_at"] = moment.isoformat() if moment is not None else None
    history = [dict(zip(HISTORY_COLUMNS, row, strict=True)) for row in batch.rows()]
    return merge_few(
        _locks(batch), members, history, cause, with_due=due is not None, committing=committing
    )


MERGE = 1  # the merge's place in the statements (after the locks)


def _locks(batch: AssignmentBatch) -> Statement:
    # The customers' locks (app.store.customer_locks), held to the commit: nobody else writes
    # them meanwhile, so the moves are computed from memberships nobody is changing, and an
    # erasure is either seen (its tombstone) or sees this. Their own statement (the merge's
    # snapshot must be taken once they are held), in one round trip with the merge.
    return lock_statement(batch.customer_ids)


# A batch's history: COPY, its text built in one pass (psycopg's per-value adaptation of
# 10,000-row arrays cost more than the database's own work).
_COPY_HISTORY = f"COPY assignments ({', '.join(HISTORY_COLUMNS)}) FROM STDIN"
SMALL_BATCH = 64


HISTORY_CHUNK = 1_000  # rows a COPY message: ~150 kB


def history_chunks(batch: AssignmentBatch) -> Iterator[str]:
    """The batch's history as COPY text, HISTORY_CHUNK rows at a time."""
    stamps = {moment: moment.isoformat() for moment in set(batch.assigned_at)}
    rows = batch.rows()
    while chunk := list(islice(rows, HISTORY_CHUNK)):
        yield "".join(
            f"{copy_text(c)}\t{i}\t{k}\t{v}\t{d!r}\t{f!r}\t{copy_text(orjson.dumps(x).decode())}\t{stamps[t]}\n"
            for c, i, k, v, d, f, x, t in chunk
        )


def _members_text(
    batch: AssignmentBatch, id_hash: IdHash, due: Mapping[str, datetime | None] | None
) -> str:
    """The batch's latest memberships (AssignmentBatch.latest) with their id hashes and due
    times, as COPY text for app.store.membership_merge.stage_members."""
    stamps = {moment: moment.isoformat() for moment in set(batch.assigned_at)}
    segment_ids, segment_keys = batch.segment_ids, batch.segment_keys
    versions, distances, confidences = batch.model_versions, batch.distances, batch.confidences
    assigned_at = batch.assigned_at
    lines = []
    for customer_id, index, profile in batch.latest():
        sent = _NOTHING_SENT if profile is None else _profile_text(profile)
        moment = due[customer_id] if due is not None else None
        lines.append(
            f"{copy_text(customer_id)}\t{segment_ids[index]}\t{segment_keys[index]}\t"
            f"{versions[index]}\t{distances[index]!r}\t{confidences[index]!r}\t"
            f"{stamps[assigned_at[index]]}\t{sent}\t{id_hash(customer_id)}\t"
            f"{moment.isoformat() if moment is not None else NULL}\n"
        )
    return "".join(lines)


_NOTHING_SENT = "\t".join(NULL for _ in PROFILE_COLUMNS)


def _profile_text(profile: CustomerProfile) -> str:
    return "\t".join(
        NULL
        if value is None
        else ("t" if value else "f")  # COPY's booleans
        if isinstance(value, bool)
        else copy_text(value)
        for value in profile.values()
    )
