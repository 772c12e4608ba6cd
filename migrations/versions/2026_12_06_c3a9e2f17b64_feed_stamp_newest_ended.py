"""Feed stamps from the newest ended transaction id (issue 14): the first stamps took the
snapshot's xmax itself, so the last write of a quiet database could wait for the next write
anywhere before its events were handed out (app.store.transaction_ids says why).

Revision ID: c3a9e2f17b64
Revises: b7e41c9d0a52
Create Date: 2026-12-06 21:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.store.transaction_ids import STAMP_DEFAULT

revision: str = "c3a9e2f17b64"
down_revision: str | None = "b7e41c9d0a52"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("membership_events", "stamp", server_default=STAMP_DEFAULT)


def downgrade() -> None:
    op.alter_column(
        "membership_events",
        "stamp",
        server_default=sa.text(
            "greatest(pg_current_xact_id(), pg_snapshot_xmax(pg_current_snapshot()))"
        ),
    )
