"""Reading and writing assignments: the only module that speaks SQL (through SQLAlchemy Core).

Functions take a Connection inside the caller's transaction and never commit themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, delete, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite

from app.store.tables import Assignment, Membership

assignments = cast(Table, Assignment.__table__)
memberships = cast(Table, Membership.__table__)


@dataclass(frozen=True)
class AssignmentRow:
    customer_id: str
    segment_id: int
    segment_key: str
    model_version: str
    distance: float
    confidence: float
    features: dict[str, Any]
    assigned_at: datetime


def store_assignments(conn: Connection, rows: Sequence[AssignmentRow]) -> None:
    """Append every row to the history and make each customer's last row their membership."""
    if not rows:
        return
    conn.execute(insert(assignments), [_history_params(r) for r in rows])
    latest = {r.customer_id: r for r in rows}  # a customer twice in one batch: the later row wins
    upsert = _upsert_membership(conn)
    conn.execute(upsert, [_membership_params(r) for r in latest.values()])


def current_membership(conn: Connection, customer_id: str) -> AssignmentRow | None:
    row = (
        conn.execute(select(memberships).where(memberships.c.customer_id == customer_id))
        .mappings()
        .first()
    )
    if row is None:
        return None
    return AssignmentRow(features={}, **{**row, "assigned_at": _utc(row["assigned_at"])})


def customer_history(conn: Connection, customer_id: str, limit: int) -> list[AssignmentRow]:
    query = (
        select(assignments)
        .where(assignments.c.customer_id == customer_id)
        .order_by(assignments.c.id.desc())
        .limit(limit)
    )
    return [
        AssignmentRow(
            **{k: v for k, v in r.items() if k != "id"} | {"assigned_at": _utc(r["assigned_at"])}
        )
        for r in conn.execute(query).mappings()
    ]


def erase_customer(conn: Connection, customer_id: str) -> int:
    """Delete the customer's history and membership; returns how many rows went."""
    history = conn.execute(
        delete(assignments).where(assignments.c.customer_id == customer_id)
    ).rowcount
    current = conn.execute(
        delete(memberships).where(memberships.c.customer_id == customer_id)
    ).rowcount
    return int(history) + int(current)


def segment_members(conn: Connection, segment_key: str, after: str | None, limit: int) -> list[str]:
    """Customer ids currently in the segment, in id order, starting after `after` (keyset paging)."""
    query = select(memberships.c.customer_id).where(memberships.c.segment_key == segment_key)
    if after is not None:
        query = query.where(memberships.c.customer_id > after)
    query = query.order_by(memberships.c.customer_id).limit(limit)
    return list(conn.execute(query).scalars())


def recent_assignments(
    conn: Connection, model_version: str, window: int
) -> list[tuple[str, dict[str, Any]]]:
    """(segment key, features) of the model's latest `window` assignments: the live drift sample."""
    query = (
        select(assignments.c.segment_key, assignments.c.features)
        .where(assignments.c.model_version == model_version)
        .order_by(assignments.c.id.desc())
        .limit(window)
    )
    return [(r[0], r[1]) for r in conn.execute(query)]


def count_members(conn: Connection, segment_key: str) -> int:
    query = (
        select(func.count())
        .select_from(memberships)
        .where(memberships.c.segment_key == segment_key)
    )
    return int(conn.execute(query).scalar_one())


def ping(conn: Connection) -> None:
    conn.execute(text("SELECT 1"))


def _upsert_membership(conn: Connection) -> Any:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(memberships)
    elif dialect == "sqlite":
        statement = sqlite.insert(memberships)
    else:
        raise RuntimeError(f"unsupported database {dialect}: use PostgreSQL or SQLite")
    updated = {
        c.name: statement.excluded[c.name] for c in memberships.columns if c.name != "customer_id"
    }
    return statement.on_conflict_do_update(index_elements=[memberships.c.customer_id], set_=updated)


def _history_params(row: AssignmentRow) -> dict[str, Any]:
    return {
        "customer_id": row.customer_id,
        "segment_id": row.segment_id,
        "segment_key": row.segment_key,
        "model_version": row.model_version,
        "distance": row.distance,
        "confidence": row.confidence,
        "features": row.features,
        "assigned_at": row.assigned_at,
    }


def _membership_params(row: AssignmentRow) -> dict[str, Any]:
    params = _history_params(row)
    del params["features"]
    return params


def _utc(moment: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; we only ever store UTC
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
