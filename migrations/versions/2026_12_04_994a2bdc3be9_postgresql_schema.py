"""The whole schema, on PostgreSQL alone: assignments, memberships (with the consent rule as
generated columns), the change feed, erasure tombstones and audit, the model registry.

The first migration of a new chain. The earlier chain, written for two SQL dialects, was replaced
before the service ran in production anywhere; a database migrated by it is refused by
`segments migrate` with the advice to drop it and migrate again.

Revision ID: 994a2bdc3be9
Revises:
Create Date: 2026-12-04 15:10:24.581285
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "994a2bdc3be9"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "assignments",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("segment_key", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("distance", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assignments")),
    )
    op.create_index(
        "ix_assignments_customer_id_assigned_at",
        "assignments",
        ["customer_id", "assigned_at", "id"],
        unique=False,
    )
    op.create_table(
        "erasure_audit",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("assignments", sa.Integer(), nullable=False),
        sa.Column("memberships", sa.Integer(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("api_key", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "action IN ('erased', 'restored')", name=op.f("ck_erasure_audit_action")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasure_audit")),
    )
    op.create_index(op.f("ix_erasure_audit_id_hash"), "erasure_audit", ["id_hash"], unique=False)
    op.create_table(
        "erasure_tombstones",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_erasure_tombstones")),
    )
    op.create_table(
        "membership_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("segment_key", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=8), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cause", sa.String(length=16), server_default="assignment", nullable=False),
        sa.Column("advertising", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("personalization", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.CheckConstraint(
            "cause IN ('assignment', 'consent', 'erasure')", name=op.f("ck_membership_events_cause")
        ),
        sa.CheckConstraint(
            "event IN ('entered', 'exited')", name=op.f("ck_membership_events_event")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_membership_events")),
    )
    op.create_index(
        "ix_membership_events_advertising_id",
        "membership_events",
        ["id"],
        unique=False,
        postgresql_where=sa.text("advertising"),
    )
    op.create_index(
        "ix_membership_events_advertising_segment_key_id",
        "membership_events",
        ["segment_key", "id"],
        unique=False,
        postgresql_where=sa.text("advertising"),
    )
    op.create_index(
        "ix_membership_events_customer_id", "membership_events", ["customer_id"], unique=False
    )
    op.create_index(
        "ix_membership_events_erasure_notices",
        "membership_events",
        ["occurred_at"],
        unique=False,
        postgresql_where=sa.text("cause = 'erasure'"),
    )
    op.create_index(
        "ix_membership_events_segment_key_id",
        "membership_events",
        ["segment_key", "id"],
        unique=False,
    )
    op.create_table(
        "memberships",
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("segment_key", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("distance", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("email_sha256", sa.String(length=64), nullable=True),
        sa.Column("phone_sha256", sa.String(length=64), nullable=True),
        sa.Column("phone_digits_sha256", sa.String(length=64), nullable=True),
        sa.Column("consent_personalization", sa.Boolean(), nullable=True),
        sa.Column("consent_advertising", sa.Boolean(), nullable=True),
        sa.Column(
            "advertising",
            sa.Boolean(),
            sa.Computed("consent_advertising IS TRUE", persisted=True),
            nullable=False,
        ),
        sa.Column(
            "personalization",
            sa.Boolean(),
            sa.Computed("consent_personalization IS NOT FALSE", persisted=True),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_memberships")),
    )
    op.create_index(
        "ix_memberships_advertising_segment_key_customer_id",
        "memberships",
        ["segment_key", "customer_id"],
        unique=False,
        postgresql_where=sa.text("advertising"),
    )
    op.create_index(
        "ix_memberships_segment_key_customer_id",
        "memberships",
        ["segment_key", "customer_id"],
        unique=False,
    )
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shadow", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "NOT (shadow AND status = 'active')", name=op.f("ck_model_versions_shadow_not_active")
        ),
        sa.CheckConstraint(
            "status IN ('candidate', 'active', 'retired')", name=op.f("ck_model_versions_status")
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_model_versions")),
    )
    op.create_index(
        "uq_model_versions_one_active",
        "model_versions",
        ["status"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_index(
        "uq_model_versions_one_shadow",
        "model_versions",
        ["shadow"],
        unique=True,
        postgresql_where=sa.text("shadow"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_model_versions_one_shadow",
        table_name="model_versions",
        postgresql_where=sa.text("shadow"),
    )
    op.drop_index(
        "uq_model_versions_one_active",
        table_name="model_versions",
        postgresql_where=sa.text("status = 'active'"),
    )
    op.drop_table("model_versions")
    op.drop_index("ix_memberships_segment_key_customer_id", table_name="memberships")
    op.drop_index(
        "ix_memberships_advertising_segment_key_customer_id",
        table_name="memberships",
        postgresql_where=sa.text("advertising"),
    )
    op.drop_table("memberships")
    op.drop_index("ix_membership_events_segment_key_id", table_name="membership_events")
    op.drop_index(
        "ix_membership_events_erasure_notices",
        table_name="membership_events",
        postgresql_where=sa.text("cause = 'erasure'"),
    )
    op.drop_index("ix_membership_events_customer_id", table_name="membership_events")
    op.drop_index(
        "ix_membership_events_advertising_segment_key_id",
        table_name="membership_events",
        postgresql_where=sa.text("advertising"),
    )
    op.drop_index(
        "ix_membership_events_advertising_id",
        table_name="membership_events",
        postgresql_where=sa.text("advertising"),
    )
    op.drop_table("membership_events")
    op.drop_table("erasure_tombstones")
    op.drop_index(op.f("ix_erasure_audit_id_hash"), table_name="erasure_audit")
    op.drop_table("erasure_audit")
    op.drop_index("ix_assignments_customer_id_assigned_at", table_name="assignments")
    op.drop_table("assignments")
