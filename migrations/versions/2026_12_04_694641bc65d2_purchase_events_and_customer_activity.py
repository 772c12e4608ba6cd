"""Purchase events (POST /v1/events), the distinct orders they belong to, each customer's
purchase aggregates kept from them, and the erasure audit's count of purchase events erased
(issue 12).

Revision ID: 694641bc65d2
Revises: 994a2bdc3be9
Create Date: 2026-12-04 17:24:57.066887
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "694641bc65d2"
down_revision: str | None = "994a2bdc3be9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "customer_activity",
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("first_purchase_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_purchase_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("spend", sa.Numeric(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_activity")),
    )
    op.create_table(
        "customer_orders",
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("order_key", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", "order_key", name=op.f("pk_customer_orders")),
    )
    op.create_table(
        "purchase_events",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("type", sa.String(length=8), nullable=False),
        sa.Column("order_id", sa.String(length=128), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("type IN ('order', 'return')", name=op.f("ck_purchase_events_type")),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_purchase_events")),
    )
    op.create_index(
        "ix_purchase_events_customer_id", "purchase_events", ["customer_id"], unique=False
    )
    op.add_column(
        "erasure_audit",
        sa.Column("purchase_events", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("erasure_audit", "purchase_events")
    op.drop_index("ix_purchase_events_customer_id", table_name="purchase_events")
    op.drop_table("purchase_events")
    op.drop_table("customer_orders")
    op.drop_table("customer_activity")
