"""Storing purchase events and keeping each customer's aggregates with them, in one statement.

Functions take a Connection inside the caller's transaction and never commit themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import cast

import orjson
from sqlalchemy import Connection, Table, delete, func, select, text

from app.store.driver import copy_in, pipelined
from app.store.tables import Cause, CustomerActivity, CustomerOrder, EventType, PurchaseEvent

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


# an Activity's fields, in its order: what every read of aggregates selects
ACTIVITY_COLUMNS = (
    customer_activity.c.customer_id,
    customer_activity.c.first_purchase_at,
    customer_activity.c.last_purchase_at,
    customer_activity.c.orders,
    customer_activity.c.spend,
)

_INCOMING = """event_id varchar, customer_id varchar, occurred_at timestamptz, amount float8,
    type varchar, order_id varchar, currency varchar, counted boolean, order_key varchar,
    spend numeric"""
INCOMING_COLUMNS = tuple(
    line.split()[0] for line in _INCOMING.replace("\n", ",").split(",") if line.strip()
)


def _record(source: str, *, mark_due: bool, answer: str) -> str:
    """The statement that stores events from `source` (rows of _INCOMING's columns) and grows
    their customers' aggregates; `mark_due` also makes each grown customer due now (cause
    assignment: the bulk load scores them afterwards); `answer` selects from `stored` or
    `grown`.

    One statement: the events not seen before are stored; of those that count, the orders not
    seen before are recorded; and each customer's aggregates grow by exactly those, with least,
    greatest and sums, so the order events arrive in does not matter. A concurrent transaction
    adding the same event or order waits on its unique index and then finds it there. Rows go
    in key order, so two transactions touching the same customers lock them in the same order
    and cannot deadlock."""
    due_columns = ", due_at, due_cause" if mark_due else ""
    due_values = f", CAST(:now AS timestamptz), '{Cause.ASSIGNMENT}'" if mark_due else ""
    due_updates = ", due_at = excluded.due_at, due_cause = excluded.due_cause" if mark_due else ""
    return f"""
    WITH incoming AS (SELECT * FROM {source}),
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
                                       spend, updated_at{due_columns})
        SELECT c.customer_id, c.first_purchase_at, c.last_purchase_at, COALESCE(o.orders, 0),
               c.spend, CAST(:now AS timestamptz){due_values}
        FROM (
            SELECT customer_id, min(occurred_at) AS first_purchase_at,
                   max(occurred_at) AS last_purchase_at, sum(spend) AS spend
            FROM counting GROUP BY customer_id
        ) AS c
        LEFT JOIN (
            SELECT customer_id, count(*) AS orders FROM new_orders GROUP BY customer_id
        ) AS o USING (customer_id)
        ORDER BY c.customer_id
        ON CONFLICT (customer_id) DO UPDATE SET
            first_purchase_at = LEAST(customer_activity.first_purchase_at,
                                      excluded.first_purchase_at),
            last_purchase_at = GREATEST(customer_activity.last_purchase_at,
                                        excluded.last_purchase_at),
            orders = customer_activity.orders + excluded.orders,
            spend = customer_activity.spend + excluded.spend,
            updated_at = excluded.updated_at{due_updates}
        RETURNING customer_id, first_purchase_at, last_purchase_at, orders, spend
    )
    {answer}
    """  # noqa: S608 - constant table and column names; the rows are bound or COPYed


# events from a request: one bound JSON parameter
_RECORD = text(
    _record(
        # LIMIT: the planner's row count (it assumes 100 rows of any set-returning function, and
        # for a few rows then preferred scanning whole tables to probing their indexes)
        f"json_to_recordset(CAST(:rows AS json)) AS rows({_INCOMING}) LIMIT :count",
        mark_due=False,
        # the ids stored now, then the grown customers' new aggregates: no second read
        answer="""SELECT event_id, NULL::varchar AS customer_id, NULL::timestamptz AS first,
                  NULL::timestamptz AS last, NULL::integer AS orders, NULL::numeric AS spend
           FROM stored
           UNION ALL
           SELECT NULL, customer_id, first_purchase_at, last_purchase_at, orders, spend
           FROM grown""",
    )
)
# events loaded in bulk (COPY into STAGING first): counts, not ids
STAGING = "ingest_staging"
_RECORD_STAGED = text(
    _record(
        STAGING,
        mark_due=True,
        answer="SELECT (SELECT count(*) FROM stored), (SELECT count(*) FROM grown)",
    )
)


def record_events(
    conn: Connection, rows: Sequence[PurchaseRow], now: datetime
) -> tuple[set[str], dict[str, Activity]]:
    """Store the events (each event id once) and grow their customers' aggregates; returns the
    ids of the events stored now (the others were stored before: retries) and the new
    aggregates of the customers they grew."""
    if not rows:
        return set(), {}
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
    stored: set[str] = set()
    grown: dict[str, Activity] = {}
    # pipelined: as a write's first statement, it goes with the transaction's BEGIN
    parameters = {"rows": payload, "count": len(rows), "now": now.isoformat()}
    for row in pipelined(conn, [(_RECORD, parameters)]):
        if row[0] is not None:
            stored.add(row[0])
        else:
            grown[row[1]] = Activity(*row[1:])
    return stored, grown


def create_staging(conn: Connection) -> None:
    """The transaction's staging table for events loaded in bulk (dropped at its end)."""
    conn.execute(text(f"CREATE TEMP TABLE {STAGING} ({_INCOMING}) ON COMMIT DROP"))


def copy_staging(conn: Connection, payload: str) -> None:
    """COPY rows (INCOMING_COLUMNS, in COPY's text format) into the staging table."""
    copy_in(conn, f"COPY {STAGING} ({', '.join(INCOMING_COLUMNS)}) FROM STDIN", payload)


def staged_customers(conn: Connection) -> list[str]:
    return list(
        conn.execute(
            text(f"SELECT DISTINCT customer_id FROM {STAGING} ORDER BY customer_id")  # noqa: S608
        ).scalars()
    )


def unstage(conn: Connection, customer_ids: Sequence[str]) -> int:
    """Drop the customers' staged rows (erased customers: nothing of theirs is stored)."""
    return conn.execute(
        text(f"DELETE FROM {STAGING} WHERE customer_id = ANY(:ids)"),  # noqa: S608
        {"ids": list(customer_ids)},
    ).rowcount


def record_staged(conn: Connection, now: datetime) -> tuple[int, int]:
    """Store the staged events as record_events does, and make every customer whose aggregates
    grew due now (cause assignment) for the refreshers to score: (events stored now, customers
    grown)."""
    stored, grown = conn.execute(_RECORD_STAGED, {"now": now.isoformat()}).one()
    return int(stored), int(grown)


def activity_of(conn: Connection, customer_ids: Sequence[str]) -> dict[str, Activity]:
    """The aggregates of those of the customers who have any (a counted purchase)."""
    query = select(*ACTIVITY_COLUMNS).where(customer_activity.c.customer_id.in_(list(customer_ids)))
    return {row.customer_id: Activity(*row) for row in conn.execute(query)}


def lock_activity(conn: Connection, customer_ids: Sequence[str]) -> None:
    """Lock the customers' aggregates, in key order, as every writer of them does before it takes
    the customers' locks (app.store.customer_locks): one order for all, so erasure, the
    refresher and event writers cannot deadlock."""
    conn.execute(
        select(customer_activity.c.customer_id)
        .where(customer_activity.c.customer_id.in_(list(customer_ids)))
        .order_by(customer_activity.c.customer_id)
        .with_for_update()
    ).all()


def set_due(conn: Connection, due: Mapping[str, datetime | None]) -> None:
    """Record when each customer's segment next changes with time alone (None: never)."""
    if not due:
        return
    payload = orjson.dumps(
        [{"customer_id": c, "due_at": d.isoformat() if d else None} for c, d in due.items()]
    ).decode()
    conn.execute(_SET_DUE, {"rows": payload, "count": len(due)})


_SET_DUE = text(
    """
    UPDATE customer_activity SET due_at = incoming.due_at, due_cause = NULL
    FROM (
        SELECT * FROM json_to_recordset(CAST(:rows AS json))
            AS rows(customer_id varchar, due_at timestamptz)
        LIMIT :count  -- the planner's row count: see _RECORD
    ) AS incoming
    WHERE customer_activity.customer_id = incoming.customer_id
    """
)


def claim_due(
    conn: Connection, now: datetime, limit: int, active_version: str
) -> list[tuple[Activity, Cause]]:
    """Up to `limit` customers due at `now`, most overdue first, locked to this transaction,
    with why each is due: bulk-loaded behaviour (the cause marked), a membership another model
    made (model), else time. Rows another transaction holds are skipped, not waited for:
    refreshers in every worker and replica share the due customers without a leader, and a
    crashed one's rows are due again the moment its transaction rolls back."""
    memberships = customer_activity.metadata.tables["memberships"]
    query = (
        select(
            *ACTIVITY_COLUMNS,
            customer_activity.c.due_cause,
            memberships.c.model_version,
        )
        .outerjoin(memberships, memberships.c.customer_id == customer_activity.c.customer_id)
        .where(customer_activity.c.due_at <= now)
        .order_by(customer_activity.c.due_at)
        .limit(limit)
        .with_for_update(of=customer_activity, skip_locked=True)
    )
    claimed = []
    for row in conn.execute(query):
        if row.due_cause is not None:
            cause = Cause(row.due_cause)
        elif row.model_version is not None and row.model_version != active_version:
            cause = Cause.MODEL
        else:
            cause = Cause.TIME
        claimed.append((Activity(*row[:5]), cause))
    return claimed


def mark_due(
    conn: Connection, now: datetime, cause: Cause, customer_ids: Sequence[str] | None = None
) -> int:
    """Make customers due now for `cause` (all customers with aggregates, unless given); the
    refreshers re-score them. How many."""
    update = customer_activity.update().values(due_at=now, due_cause=cause.value)
    if customer_ids is not None:
        update = update.where(customer_activity.c.customer_id.in_(list(customer_ids)))
    return conn.execute(update).rowcount


def due_summary(conn: Connection, now: datetime) -> tuple[int, datetime | None]:
    """(customers due at `now`, the earliest due time among them)."""
    count, earliest = conn.execute(
        select(func.count(), func.min(customer_activity.c.due_at)).where(
            customer_activity.c.due_at <= now
        )
    ).one()
    return int(count), earliest


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
