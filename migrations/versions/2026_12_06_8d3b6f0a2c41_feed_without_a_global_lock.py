"""The change feed without the fleet's one lock (issue 14): each event carries its writing
transaction's id and a stamp (app.store.transaction_ids), and the feeds are read in (stamp, id)
order. Events written before get 0 in both: they come first, in the id order they had.

Revision ID: 8d3b6f0a2c41
Revises: 5c2e8d41a7f3
Create Date: 2026-12-06 20:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.store.transaction_ids import STAMP_DEFAULT, TX_DEFAULT, TransactionId

revision: str = "8d3b6f0a2c41"
down_revision: str | None = "5c2e8d41a7f3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = sa.text("'0'::xid8")  # a constant default: the column is added without a table rewrite


def upgrade() -> None:
    for column, default in (("tx", TX_DEFAULT), ("stamp", STAMP_DEFAULT)):
        op.add_column(
            "membership_events",
            sa.Column(column, TransactionId(), server_default=_OLD, nullable=False),
        )
        op.alter_column("membership_events", column, server_default=default)
    op.drop_index("ix_membership_events_segment_key_id", table_name="membership_events")
    op.drop_index("ix_membership_events_advertising_id", table_name="membership_events")
    op.drop_index("ix_membership_events_advertising_segment_key_id", table_name="membership_events")
    op.create_index("ix_membership_events_stamp_id", "membership_events", ["stamp", "id"])
    op.create_index(
        "ix_membership_events_segment_key_stamp_id",
        "membership_events",
        ["segment_key", "stamp", "id"],
    )
    op.create_index(
        "ix_membership_events_advertising_stamp_id",
        "membership_events",
        ["stamp", "id"],
        postgresql_where=sa.text("advertising"),
    )
    op.create_index(
        "ix_membership_events_advertising_segment_key_stamp_id",
        "membership_events",
        ["segment_key", "stamp", "id"],
        postgresql_where=sa.text("advertising"),
    )


def downgrade() -> None:
    for name in (
        "ix_membership_events_advertising_segment_key_stamp_id",
        "ix_membership_events_advertising_stamp_id",
        "ix_membership_events_segment_key_stamp_id",
        "ix_membership_events_stamp_id",
    ):
        op.drop_index(name, table_name="membership_events")
    op.create_index(
        "ix_membership_events_segment_key_id", "membership_events", ["segment_key", "id"]
    )
    op.create_index(
        "ix_membership_events_advertising_id",
        "membership_events",
        ["id"],
        postgresql_where=sa.text("advertising"),
    )
    op.create_index(
        "ix_membership_events_advertising_segment_key_id",
        "membership_events",
        ["segment_key", "id"],
        postgresql_where=sa.text("advertising"),
    )
    op.drop_column("membership_events", "stamp")
    op.drop_column("membership_events", "tx")
