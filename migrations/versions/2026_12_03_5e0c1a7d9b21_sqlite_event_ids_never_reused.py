"""SQLite: change-feed event ids are never reused

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

from alembic import op

revision: str = "5e0c1a7d9b21"
down_revision: str | None = "0b75c0bfbe10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # rebuilt from its reflection (columns, checks, indexes), rows copied with their ids, so
    # the sequence starts after the highest id still there
    with op.batch_alter_table(
        "membership_events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "membership_events", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ):
        pass
