"""Finding the customers a model switch left behind: memberships another version made.

After an activation, every stored customer is re-segmented by the new model, in chunks, by the
refreshers (app.service.refresher). The queue is the memberships themselves: a membership whose
`model_version` is not the active one still waits, so the work resumes wherever a crash left
it, with nothing to record. Keyset paging (`after`) walks each round forward once.

Functions take a Connection inside the caller's transaction and never commit themselves.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Connection, Table, func, select, text

from app.store import registry
from app.store.events import ACTIVITY_COLUMNS, Activity, customer_activity
from app.store.tables import Membership

memberships = cast(Table, Membership.__table__)


def claim_activity_behind(
    conn: Connection, active_version: str, after: str, limit: int
) -> list[Activity]:
    """Customers with aggregates whose membership another version made, after `after` in id
    order: their aggregates locked (skipping rows another transaction holds), as event writers
    lock them, so re-scoring and events take locks in one order."""
    query = (
        select(*ACTIVITY_COLUMNS)
        .join(memberships, memberships.c.customer_id == customer_activity.c.customer_id)
        .where(memberships.c.model_version.in_(_others(conn, active_version)))
        .where(customer_activity.c.customer_id > after)
        .order_by(customer_activity.c.customer_id)
        .limit(limit)
        .with_for_update(of=customer_activity, skip_locked=True)
    )
    return [Activity(*row) for row in conn.execute(query)]


_FEATURES_BEHIND = text(
    """
    SELECT m.customer_id,
           (SELECT h.features FROM assignments AS h WHERE h.customer_id = m.customer_id
            ORDER BY h.assigned_at DESC, h.id DESC LIMIT 1) AS features
    FROM memberships AS m
    WHERE m.model_version = ANY(:others) AND m.customer_id > :after
      AND (:with_activity OR NOT EXISTS (
          SELECT 1 FROM customer_activity AS a WHERE a.customer_id = m.customer_id))
    ORDER BY m.customer_id
    LIMIT :limit
    """
)


def features_behind(
    conn: Connection, active_version: str, after: str, limit: int, *, with_activity: bool
) -> list[tuple[str, dict[str, Any]]]:
    """Customers known only from features sent to them (no aggregates; with `with_activity`,
    those with aggregates too: for a model that does not take RFM features) whose membership
    another version made, after `after` in id order, with the features of their latest
    assignment. The caller locks them (app.store.customer_locks) before it re-scores them."""
    rows = conn.execute(
        _FEATURES_BEHIND,
        {
            "others": _others(conn, active_version),
            "after": after,
            "limit": limit,
            "with_activity": with_activity,
        },
    )
    return [(row.customer_id, row.features or {}) for row in rows]


def memberships_behind(conn: Connection, active_version: str) -> int:
    """Memberships another version made: the re-score still to do (or impossible: see the
    refresher for customers whose last features the active model cannot take)."""
    query = (
        select(func.count())
        .select_from(memberships)
        .where(memberships.c.model_version.in_(_others(conn, active_version)))
    )
    return int(conn.execute(query).scalar_one())


def _others(conn: Connection, active_version: str) -> list[str]:
    """Every registered version but the active one. Memberships are found by version through
    their (model_version, customer_id) index: when none is behind, finding that is instant."""
    return [m.version for m in registry.listed(conn) if m.version != active_version]
