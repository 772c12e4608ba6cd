"""erasure notices in the change feed; SQLite: event ids are never reused

An erased customer leaves the feeds with an `exited` event of cause `erasure` (kept for
SEGMENTS_ERASURE_NOTICE_DAYS), found for pruning by a partial index. The advertising feeds get
partial indexes of their own: with few customers opted in, a poll no longer walks every other
event after its cursor.

Without AUTOINCREMENT, SQLite hands out max(id) + 1, so erasing the newest events freed their
ids and a later event could take one that a feed consumer's cursor had already passed (it
would never see it). The table is rebuilt with AUTOINCREMENT; PostgreSQL's sequence never
reuses ids, so it is left alone.

Revision ID: 5e0c1a7d9b21
Revises: 0b75c0bfbe10
Create Date: 2026-12-03 07:35:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5e0c1a7d9b21"
down_revision: str | None = "0b75c0bfbe10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_NOTICES = "cause = 'erasure'"
_ADVERTISING_INDEXES = [
    ("ix_membership_events_advertising_id", ["id"]),
    ("ix_membership_events_advertising_segment_key_id", ["segment_key", "id"]),
]


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # on SQLite the table is rebuilt from its reflection (columns, checks, indexes), rows
    # copied with their ids, so the sequence starts after the highest id still there
    with op.batch_alter_table(
        "membership_events",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch_op:
        batch_op.drop_constraint(op.f("ck_membership_events_cause"), type_="check")
        batch_op.create_check_constraint(
            op.f("ck_membership_events_cause"), "cause IN ('assignment', 'consent', 'erasure')"
        )
        batch_op.create_index(
            "ix_membership_events_erasure_notices",
            ["occurred_at"],
            postgresql_where=sa.text(_NOTICES),
            sqlite_where=sa.text(_NOTICES),
        )
        for name, columns in _ADVERTISING_INDEXES:
            batch_op.create_index(
                name,
                columns,
                postgresql_where=sa.text("advertising"),
                sqlite_where=sa.text("advertising"),
            )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.execute("DELETE FROM membership_events WHERE cause = 'erasure'")
    with op.batch_alter_table(
        "membership_events",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": False},
    ) as batch_op:
        batch_op.drop_index("ix_membership_events_erasure_notices")
        for name, _ in _ADVERTISING_INDEXES:
            batch_op.drop_index(name)
        batch_op.drop_constraint(op.f("ck_membership_events_cause"), type_="check")
        batch_op.create_check_constraint(
            op.f("ck_membership_events_cause"), "cause IN ('assignment', 'consent')"
        )
