"""Reading what app.store.assignments stored: a customer's membership and history, and the
samples drift and model comparisons are computed from.

Functions take a Connection inside the caller's transaction and never commit themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from app.audience.consent import Purpose
from app.audience.profile import PROFILE_COLUMNS, CustomerProfile
from app.store.assignments import AssignmentRow, assignments, memberships
from app.store.tables import HISTORY_COLUMNS, MEMBERSHIP_COLUMNS


@dataclass(frozen=True)
class StoredMembership:
    """A customer's current segment (their latest assignment, with the identifiers and consent
    they sent), and the purposes whose audiences their consent puts them in."""

    assignment: AssignmentRow
    purposes: frozenset[Purpose]


def current_membership(conn: Connection, customer_id: str) -> StoredMembership | None:
    purposes = [memberships.c[p.value] for p in Purpose]  # the generated consent columns
    query = select(
        *(memberships.c[name] for name in (*MEMBERSHIP_COLUMNS, *PROFILE_COLUMNS)), *purposes
    ).where(memberships.c.customer_id == customer_id)
    row = conn.execute(query).mappings().first()
    if row is None:
        return None
    assignment = AssignmentRow(
        features={},
        profile=CustomerProfile(*(row[name] for name in PROFILE_COLUMNS)),
        **{name: row[name] for name in MEMBERSHIP_COLUMNS},
    )
    return StoredMembership(assignment, frozenset(p for p in Purpose if row[p.value]))


def current_assignments(conn: Connection, customer_ids: list[str]) -> dict[str, AssignmentRow]:
    """The current membership of those of the customers who have one (without profiles)."""
    query = select(*(memberships.c[name] for name in MEMBERSHIP_COLUMNS)).where(
        memberships.c.customer_id.in_(customer_ids)
    )
    return {
        row["customer_id"]: AssignmentRow(features={}, **row)
        for row in conn.execute(query).mappings()
    }


def customer_history(conn: Connection, customer_id: str, limit: int) -> list[AssignmentRow]:
    """The customer's assignments, newest first (the order membership follows)."""
    query = (
        select(*(assignments.c[name] for name in HISTORY_COLUMNS))
        .where(assignments.c.customer_id == customer_id)
        .order_by(assignments.c.assigned_at.desc(), assignments.c.id.desc())
        .limit(limit)
    )
    return [AssignmentRow(**row) for row in conn.execute(query).mappings()]


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
    return [(r[0], r[1], r[2]) for r in conn.execute(query)]


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
