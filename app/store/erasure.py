"""Erasing customers: what goes, the tombstone that keeps them out, the audit trail.

Functions take a Connection inside the caller's transaction and never commit themselves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, literal, or_, select

from app.store.assignments import (
    IdHash,
    assignments,
    erasure_audit,
    membership_events,
    memberships,
    tombstones,
)
from app.store.customer_locks import lock_customers
from app.store.events import forget, lock_activity
from app.store.tables import Cause, ErasureAction, FeedEvent


@dataclass(frozen=True)
class Erasure:
    """What erasing one customer deleted, and whether a tombstone stood already."""

    customer_id: str
    assignments: int
    memberships: int
    events: int  # change-feed events
    purchase_events: int
    already_erased: bool

    @property
    def found(self) -> bool:
        return bool(self.assignments or self.memberships or self.events or self.purchase_events)


def erase_customers(
    conn: Connection,
    customer_ids: Sequence[str],
    id_hash: IdHash,
    api_key: str,
    now: datetime,
    notice_days: int = 0,
) -> list[Erasure]:
    """Erase each customer: history, membership (with hashes and consent) and change events go;
    a tombstone (their keyed id hash) is recorded and one audit row per customer says what went
    and which key asked. Holds the customers' locks, so a concurrent write either committed
    before (and is deleted here) or sees the tombstone (and stores nothing).

    With `notice_days` > 0, each feed the customer was in gets one `exited` event with cause
    `erasure`: an ad platform that follows the feed must drop the customer from the audience it
    uploaded (GDPR Art. 19: tell the recipients). Those notices are the only trace of the id
    besides the tombstone, and are deleted `notice_days` after the erasure (by the next
    erasure, or by app.service.erasure.NoticePruner's timer, whichever comes first)."""
    ids = list(dict.fromkeys(customer_ids))
    hashes = {customer_id: id_hash(customer_id) for customer_id in ids}
    lock_activity(conn, ids)  # before the customers' locks, as event writers and the refresher
    lock_customers(conn, ids)
    if notice_days > 0:  # before the membership goes
        _write_erasure_notices(conn, ids, now)
    standing = set(
        conn.execute(
            select(tombstones.c.id_hash).where(tombstones.c.id_hash.in_(list(hashes.values())))
        ).scalars()
    )
    counts = {
        table.name: Counter(
            conn.execute(
                delete(table)
                .where(table.c.customer_id.in_(ids), *kept)
                .returning(table.c.customer_id)
            ).scalars()
        )
        for table, kept in (
            (assignments, ()),
            (memberships, ()),
            # an earlier erasure's notice stays until it expires: followers may not have read it
            (membership_events, (membership_events.c.cause != Cause.ERASURE,)),
        )
    }
    purchases = forget(conn, ids)  # purchase events, orders and aggregates
    prune_erasure_notices(conn, now, notice_days)
    # under the locks: a concurrent erasure of the same id committed before `standing` was read
    new = [{"id_hash": h, "erased_at": now} for h in hashes.values() if h not in standing]
    if new:
        conn.execute(insert(tombstones), new)
    erasures = [
        Erasure(
            customer_id,
            counts["assignments"][customer_id],
            counts["memberships"][customer_id],
            counts["membership_events"][customer_id],
            purchases.get(customer_id, 0),
            hashes[customer_id] in standing,
        )
        for customer_id in ids
    ]
    conn.execute(
        insert(erasure_audit),
        [
            {
                "action": ErasureAction.ERASED,
                "id_hash": hashes[e.customer_id],
                "assignments": e.assignments,
                "memberships": e.memberships,
                "events": e.events,
                "purchase_events": e.purchase_events,
                "api_key": api_key,
                "occurred_at": now,
            }
            for e in erasures
        ],
    )
    return erasures


def _write_erasure_notices(conn: Connection, ids: list[str], now: datetime) -> None:
    """An `exited` event (cause erasure) for each erased customer, in the feeds of the purposes
    whose audiences they are in (the memberships' generated consent columns)."""
    notices = select(
        memberships.c.customer_id,
        memberships.c.segment_id,
        memberships.c.segment_key,
        literal(FeedEvent.EXITED.value),
        memberships.c.model_version,
        memberships.c.confidence,
        literal(now),
        literal(Cause.ERASURE.value),
        memberships.c.advertising,
        memberships.c.personalization,
    ).where(
        memberships.c.customer_id.in_(ids),
        or_(memberships.c.advertising, memberships.c.personalization),
    )
    columns = [
        "customer_id",
        "segment_id",
        "segment_key",
        "event",
        "model_version",
        "confidence",
        "occurred_at",
        "cause",
        "advertising",
        "personalization",
    ]
    conn.execute(insert(membership_events).from_select(columns, notices))


def prune_erasure_notices(conn: Connection, now: datetime, notice_days: int) -> int:
    """Delete the erasure notices older than `notice_days` at `now`: past that, the id is gone
    from the feed too. Returns how many went."""
    before = now - timedelta(days=notice_days)
    return conn.execute(
        delete(membership_events).where(
            membership_events.c.cause == Cause.ERASURE, membership_events.c.occurred_at < before
        )
    ).rowcount


def erased_among(conn: Connection, customer_ids: Sequence[str], id_hash: IdHash) -> set[str]:
    """Those of the customers a tombstone stands for, checked under the customers' locks that
    erasure holds too: an erasure either committed before (and is seen) or waits for the caller's
    commit (and then deletes what it wrote)."""
    hashes = {id_hash(customer_id): customer_id for customer_id in customer_ids}
    lock_customers(conn, customer_ids)
    standing = conn.execute(
        select(tombstones.c.id_hash).where(tombstones.c.id_hash.in_(list(hashes)))
    ).scalars()
    return {hashes[h] for h in standing}


def restore_customer(
    conn: Connection, customer_id: str, id_hash: IdHash, api_key: str, now: datetime
) -> bool:
    """Lift the customer's tombstone (audited); False when there was none."""
    hashed = id_hash(customer_id)
    lock_customers(conn, [customer_id])
    lifted = conn.execute(delete(tombstones).where(tombstones.c.id_hash == hashed)).rowcount
    if not lifted:
        return False
    conn.execute(
        insert(erasure_audit).values(
            action=ErasureAction.RESTORED,
            id_hash=hashed,
            assignments=0,
            memberships=0,
            events=0,
            api_key=api_key,
            occurred_at=now,
        )
    )
    return True


def erasure_audit_rows(conn: Connection, customer_id: str, id_hash: IdHash) -> list[dict[str, Any]]:
    """The audit trail of one customer, oldest first."""
    query = (
        select(erasure_audit)
        .where(erasure_audit.c.id_hash == id_hash(customer_id))
        .order_by(erasure_audit.c.id)
    )
    return [dict(row) for row in conn.execute(query).mappings()]
