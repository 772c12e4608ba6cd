"""Memberships keep room in each page for a row's next version (issue 14): a re-assignment
that keeps the segment and model changes no indexed column, and then writes no index entry
(a HOT update). Pages written before keep no room until the table is rewritten (VACUUM FULL,
or pg_repack without the lock).

Revision ID: b7e41c9d0a52
Revises: 8d3b6f0a2c41
Create Date: 2026-12-06 20:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "b7e41c9d0a52"
down_revision: str | None = "8d3b6f0a2c41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE memberships SET (fillfactor = 70)")


def downgrade() -> None:
    op.execute("ALTER TABLE memberships RESET (fillfactor)")
