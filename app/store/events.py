"""Storing purchase events and keeping each customer's aggregates with them, in one statement.

Functions take a Connection inside the caller's transaction and never commit themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import cast

import orjson
from sqlalchemy import Connection, Table, delete, select, text

from app.store.tables import CustomerActivity, CustomerOrder, EventType, PurchaseEvent

purchase_events = cast(Table, PurchaseEvent.__table__)
customer_orders = cast(Table, CustomerOrder.__table__)
customer_activity = cast(Table, CustomerActivity.__table__)


@dataclass(frozen=True)
class PurchaseRow:
    """One validated event, with what the RFM rules make of it (app.training.rfm)."""

    event_id: str
    customer_id: str
    occurred_at: datetime
    amount: float
    type: EventType
    order_id: str | None
    currency: str | None
    counted: bool  # is_purchase: counts towards the aggregates
    order_key: str  # the order it belongs to
    spend: Decimal  # exact_amount


@dataclass(frozen=True)
class Activity:
    """A customer's aggregates: what their features are computed from."""

    customer_id: str
    first_purchase_at: datetime
    last_purchase_at: datetime
    orders: int
    spend: Decimal


_INCOMING = """event_id varchar, customer_id varchar, occurred_at timestamptz, amount float8,
    type varchar, order_id varchar, currency varchar, counted boolean, order_key varchar,
    spend numeric"""
# One statement: the events not seen before are stored; of those that count, the orders not
# seen before are recorded; and each customer's aggregates grow by exactly those, with least,
# greatest and sums, so the order events arrive in does not matter. A concurrent transaction
# adding the same event or order waits on its unique index and then finds it there. Rows go in
# key order, so two transactions touching the same customers lock them in the same order and
# cannot deadlock.
_RECORD = text(
    f"""
    WITH incoming AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS rows({_INCOMING})
    ),
    stored AS (
        INSERT INTO purchase_events (event_id, customer_id, occurred_at, amount, type, order_id,
                                     currency, counted, received_at)
        SELECT event_id, customer_id, occurred_at, amount, type, order_id, currency, counted,
               CAST(:now AS timestamptz)
        FROM incoming ORDER BY event_id
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
    ),
    counting AS (
        SELECT incoming.* FROM incoming JOIN stored USING (event_id) WHERE incoming.counted
    ),
    new_orders AS (
        INSERT INTO customer_orders (customer_id, order_key)
        SELECT DISTINCT customer_id, order_key FROM counting ORDER BY customer_id, order_key
        ON CONFLICT DO NOTHING
        RETURNING customer_id
    ),
    grown AS (
        INSERT INTO customer_activity (customer_id, first_purchase_at, last_purchase_at, orders,
                                       spend, updated_at)
        SELECT c.customer_id, min(c.occurred_at), max(c.occurred_at),
               (SELECT count(*) FROM new_orders AS o WHERE o.customer_id = c.customer_id),
               sum(c.spend), CAST(:now AS timestamptz)
        FROM counting AS c GROUP BY c.customer_id ORDER BY c.customer_id
        ON CONFLICT (customer_id) DO UPDATE SET
            first_purchase_at = LEAST(customer_activity.first_purchase_at,
                                      excluded.first_purchase_at),
            last_purchase_at = GREATEST(customer_activity.last_purchase_at,
                                        excluded.last_purchase_at),
            orders = customer_activity.orders + excluded.orders,
            spend = customer_activity.spend + excluded.spend,
            updated_at = excluded.updated_at
        RETURNING customer_id
    )
    SELECT event_id FROM stored
    """  # noqa: S608 - constant table and column names; the rows are one bound parameter
)


def record_events(conn: Connection, rows: Sequence[PurchaseRow], now: datetime) -> set[str]:
    """Store the events (each event id once) and grow their customers' aggregates; returns the
    ids of the events stored now (the others were stored before: retries)."""
    if not rows:
        return set()
    payload = orjson.dumps(
        [
            {
                "event_id": r.event_id,
                "customer_id": r.customer_id,
                "occurred_at": r.occurred_at.isoformat(),
                "amount": r.amount,
                "type": r.type.value,
                "order_id": r.order_id,
                "currency": r.currency,
                "counted": r.counted,
                "order_key": r.order_key,
                "spend": str(r.spend),  # as text: JSON numbers would go through a float
            }
            for r in rows
        ]
    ).decode()
    stored = conn.execute(_RECORD, {"rows": payload, "now": now.isoformat()}).scalars()
    return set(stored)


def activity_of(conn: Connection, customer_ids: Sequence[str]) -> dict[str, Activity]:
    """The aggregates of those of the customers who have any (a counted purchase)."""
    query = select(
        customer_activity.c.customer_id,
        customer_activity.c.first_purchase_at,
        customer_activity.c.last_purchase_at,
        customer_activity.c.orders,
        customer_activity.c.spend,
    ).where(customer_activity.c.customer_id.in_(list(customer_ids)))
    return {row.customer_id: Activity(*row) for row in conn.execute(query)}


def forget(conn: Connection, customer_ids: Sequence[str]) -> dict[str, int]:
    """Delete the customers' events, orders and aggregates; how many events each had."""
    ids = list(customer_ids)
    counts: dict[str, int] = {}
    for customer_id in conn.execute(
        delete(purchase_events)
        .where(purchase_events.c.customer_id.in_(ids))
        .returning(purchase_events.c.customer_id)
    ).scalars():
        counts[customer_id] = counts.get(customer_id, 0) + 1
    conn.execute(delete(customer_orders).where(customer_orders.c.customer_id.in_(ids)))
    conn.execute(delete(customer_activity).where(customer_activity.c.customer_id.in_(ids)))
    return counts
