"""Segments follow time and model switches (issue 12): each customer's due time (when their
segment next changes if they buy nothing more, or now when bulk-loaded behaviour or a model
switch needs them re-scored, with that cause) and the feed causes `time` and `model`.

Revision ID: 3f1c9a7e5b20
Revises: 694641bc65d2
Create Date: 2026-12-04 18:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3f1c9a7e5b20"
down_revision: str | None = "694641bc65d2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CAUSES_BEFORE = "cause IN ('assignment', 'consent', 'erasure')"
_CAUSES = "cause IN ('assignment', 'consent', 'erasure', 'time', 'model')"


def upgrade() -> None:
    op.add_column(
        "customer_activity", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("customer_activity", sa.Column("due_cause", sa.String(length=16), nullable=True))
    op.create_check_constraint(
        op.f("ck_customer_activity_due_cause"),
        "customer_activity",
        "due_cause IN ('assignment', 'model')",
    )
    op.create_index(
        "ix_customer_activity_due_at",
        "customer_activity",
        ["due_at"],
        unique=False,
        postgresql_where=sa.text("due_at IS NOT NULL"),
    )
    op.drop_constraint(op.f("ck_membership_events_cause"), "membership_events", type_="check")
    op.create_check_constraint(op.f("ck_membership_events_cause"), "membership_events", _CAUSES)
    op.create_index(
        "ix_memberships_model_version_customer_id",
        "memberships",
        ["model_version", "customer_id"],
        unique=False,
    )
    # audiences are one model's: its segment's members, in customer-id order
    op.drop_index("ix_memberships_segment_key_customer_id", table_name="memberships")
    op.drop_index("ix_memberships_advertising_segment_key_customer_id", table_name="memberships")
    op.create_index(
        "ix_memberships_segment_key_version_customer",
        "memberships",
        ["segment_key", "model_version", "customer_id"],
        unique=False,
    )
    op.create_index(
        "ix_memberships_advertising_segment_key_version_customer",
        "memberships",
        ["segment_key", "model_version", "customer_id"],
        unique=False,
        postgresql_where=sa.text("advertising"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_memberships_advertising_segment_key_version_customer",
        table_name="memberships",
    )
    op.drop_index("ix_memberships_segment_key_version_customer", table_name="memberships")
    op.create_index(
        "ix_memberships_segment_key_customer_id",
        "memberships",
        ["segment_key", "customer_id"],
        unique=False,
    )
    op.create_index(
        "ix_memberships_advertising_segment_key_customer_id",
        "memberships",
        ["segment_key", "customer_id"],
        unique=False,
        postgresql_where=sa.text("advertising"),
    )
    op.drop_index("ix_memberships_model_version_customer_id", table_name="memberships")
    op.execute("DELETE FROM membership_events WHERE cause IN ('time', 'model')")
    op.drop_constraint(op.f("ck_membership_events_cause"), "membership_events", type_="check")
    op.create_check_constraint(
        op.f("ck_membership_events_cause"), "membership_events", _CAUSES_BEFORE
    )
    op.drop_index("ix_customer_activity_due_at", table_name="customer_activity")
    op.drop_constraint(op.f("ck_customer_activity_due_cause"), "customer_activity", type_="check")
    op.drop_column("customer_activity", "due_cause")
    op.drop_column("customer_activity", "due_at")
