"""The database schema: every assignment ever made, and each customer's current membership."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Index, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so migrations can refer to them (Alembic's naming-convention advice).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT identity on PostgreSQL; SQLite only auto-increments a column declared INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Assignment(Base):
    """One scoring of one customer, kept as history (and as the live sample drift is computed from)."""

    __tablename__ = "assignments"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    segment_id: Mapped[int] = mapped_column(Integer)
    segment_key: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    distance: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # a customer's history, newest first (assigned_at, then id to break ties)
        Index("ix_assignments_customer_id_assigned_at", "customer_id", "assigned_at", "id"),
        # no (model_version, id) index: the drift window walks the primary key backwards, where
        # the newest rows are the active model's, and every index slows the bulk COPY
    )


class Membership(Base):
    """A customer's current segment: the assignment with the latest assigned_at, one row per customer.

    Concurrent writers may commit out of order; the upsert keeps the row whose assigned_at is
    latest, and history is read in the same order, so the two always agree.
    """

    __tablename__ = "memberships"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    segment_id: Mapped[int] = mapped_column(Integer)
    segment_key: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    distance: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    # audience paging walks one segment in customer-id order
    __table_args__ = (
        Index("ix_memberships_segment_key_customer_id", "segment_key", "customer_id"),
    )
