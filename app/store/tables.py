"""The database schema: every assignment ever made, each customer's current membership (with
consent and hashed identifiers), the change feed, purchase events and the aggregates kept from
them, erasure tombstones and their audit trail, and the registry of model versions."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.store.transaction_ids import STAMP_DEFAULT, TX_DEFAULT, TransactionId

# Stable constraint names, so migrations can refer to them (Alembic's naming-convention advice).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


MEMBERSHIPS_FILLFACTOR = 70


def _one_of(column: str, values: type[StrEnum]) -> str:
    """A CHECK that `column` holds one of the enumeration's values."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# the columns a stored assignment fills in the history, and in the customer's membership
HISTORY_COLUMNS = (
    "customer_id",
    "segment_id",
    "segment_key",
    "model_version",
    "distance",
    "confidence",
    "features",
    "assigned_at",
)
MEMBERSHIP_COLUMNS = tuple(c for c in HISTORY_COLUMNS if c != "features")


class Assignment(Base):
    """One scoring of one customer, kept as history (and as the live sample drift is computed from)."""

    __tablename__ = "assignments"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
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

    Concurrent writers may commit out of order; the merge keeps the row whose assigned_at is
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
    # when the customer entered the segment they are in: kept while re-assignments agree
    entered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Normalised SHA-256 hashes for ad-platform matching; the raw values are never stored.
    # Phones twice: Google hashes E.164 with its "+", Meta the digits alone.
    email_sha256: Mapped[str | None] = mapped_column(String(64))
    phone_sha256: Mapped[str | None] = mapped_column(String(64))
    phone_digits_sha256: Mapped[str | None] = mapped_column(String(64))
    # Consent as last sent (NULL: never sent).
    consent_personalization: Mapped[bool | None] = mapped_column(Boolean)
    consent_advertising: Mapped[bool | None] = mapped_column(Boolean)
    # Whether the customer is in each purpose's audiences: THE consent rule, written here once
    # and computed by the database (app/audience/consent.py says why). Advertising needs an
    # explicit opt-in; personalization holds unless the customer objected. Lookups, audiences,
    # exports, the change feed and erasure notices all read these two columns.
    advertising: Mapped[bool] = mapped_column(
        Boolean, Computed("consent_advertising IS TRUE", persisted=True)
    )
    personalization: Mapped[bool] = mapped_column(
        Boolean, Computed("consent_personalization IS NOT FALSE", persisted=True)
    )

    __table_args__ = (
        # audience paging walks one segment of one model in customer-id order (a key of
        # another model is another audience)
        Index(
            "ix_memberships_segment_key_version_customer",
            "segment_key",
            "model_version",
            "customer_id",
        ),
        # the re-score after a model switch finds the memberships another version made
        Index("ix_memberships_model_version_customer_id", "model_version", "customer_id"),
        # the advertising audience of a segment, which few customers may have opted in to
        Index(
            "ix_memberships_advertising_segment_key_version_customer",
            "segment_key",
            "model_version",
            "customer_id",
            postgresql_where=text("advertising"),
        ),
        # room in each page for a row's next version: a re-assignment that keeps the segment
        # and model (most of them) changes no indexed column, and then writes no index entry
        # (a HOT update). Measured: 10,000 such upserts 124 -> 48 ms.
        {"postgresql_with": {"fillfactor": MEMBERSHIPS_FILLFACTOR}},
    )


class FeedEvent(StrEnum):
    ENTERED = "entered"
    EXITED = "exited"


class Cause(StrEnum):
    """Why a change-feed event happened."""

    ASSIGNMENT = "assignment"  # the customer moved to another segment
    CONSENT = "consent"  # they joined or left a purpose's audience while staying in the segment
    ERASURE = "erasure"  # they were erased: the feed's last word on them
    TIME = "time"  # time passed: their recency grew and the model now puts them elsewhere
    MODEL = "model"  # a newly activated model put them elsewhere (re-scored on activation)


class MembershipEvent(Base):
    """A customer entered or exited a segment: the change feed ad platforms follow.

    Readers page in (stamp, id) order, and only below the oldest transaction still running
    (app.store.transaction_ids says why that hands out every event once, each customer's in
    commit order). The events are written by one statement, app.store.assignments' membership
    merge (and erasure notices by app.store.erasure).
    """

    __tablename__ = "membership_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    segment_id: Mapped[int] = mapped_column(Integer)
    segment_key: Mapped[str] = mapped_column(String(64))
    event: Mapped[FeedEvent] = mapped_column(String(8))
    model_version: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cause: Mapped[Cause] = mapped_column(String(16), server_default=Cause.ASSIGNMENT.value)
    # which purposes' feeds carry the event: the customer's consent at that moment decides
    advertising: Mapped[bool] = mapped_column(Boolean, server_default=false())
    personalization: Mapped[bool] = mapped_column(Boolean, server_default=true())
    # the writing transaction, and the feed position's first part (events written before these
    # columns have 0 in both, so they come first, in id order as they always were)
    tx: Mapped[int] = mapped_column(TransactionId(), server_default=TX_DEFAULT)
    stamp: Mapped[int] = mapped_column(TransactionId(), server_default=STAMP_DEFAULT)

    __table_args__ = (
        CheckConstraint(_one_of("event", FeedEvent), name="event"),
        CheckConstraint(_one_of("cause", Cause), name="cause"),
        # the feeds (all segments, one segment), in feed order
        Index("ix_membership_events_stamp_id", "stamp", "id"),
        Index("ix_membership_events_segment_key_stamp_id", "segment_key", "stamp", "id"),
        # erasure finds a customer's events
        Index("ix_membership_events_customer_id", "customer_id"),
        # the advertising feeds (all segments, one segment): when few customers opt in, a poll
        # must not walk every personalization event after its cursor to find none
        Index(
            "ix_membership_events_advertising_stamp_id",
            "stamp",
            "id",
            postgresql_where=text("advertising"),
        ),
        Index(
            "ix_membership_events_advertising_segment_key_stamp_id",
            "segment_key",
            "stamp",
            "id",
            postgresql_where=text("advertising"),
        ),
        # erasure notices past their retention are found without scanning the feed
        Index(
            "ix_membership_events_erasure_notices",
            "occurred_at",
            postgresql_where=text(f"cause = '{Cause.ERASURE}'"),
        ),
    )


class EventType(StrEnum):
    ORDER = "order"
    RETURN = "return"


class PurchaseEvent(Base):
    """A purchase (or return) event as the caller sent it, once per event id: a retry of the same
    id is acknowledged and ignored. `counted` says whether it counts towards the customer's
    aggregates (app.training.rfm.is_purchase: cancellations and returns do not)."""

    __tablename__ = "purchase_events"

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    amount: Mapped[float] = mapped_column(Float)
    type: Mapped[EventType] = mapped_column(String(8))
    order_id: Mapped[str | None] = mapped_column(String(128))
    currency: Mapped[str | None] = mapped_column(String(3))
    counted: Mapped[bool] = mapped_column(Boolean)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_one_of("type", EventType), name="type"),
        # erasure finds a customer's events
        Index("ix_purchase_events_customer_id", "customer_id"),
    )


class CustomerOrder(Base):
    """The distinct orders a customer's counted events belong to (app.training.rfm.order_key):
    an order counts once however many of its lines arrive, in whatever order."""

    __tablename__ = "customer_orders"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    order_key: Mapped[str] = mapped_column(String(128), primary_key=True)


class CustomerActivity(Base):
    """Each customer's purchase aggregates, kept with every event batch in the same transaction.
    Each update is commutative (least, greatest, sums), so events may arrive late and out of
    order; the features as of any day follow from these (app.training.rfm.rfm_features)."""

    __tablename__ = "customer_activity"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_purchase_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_purchase_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    orders: Mapped[int] = mapped_column(Integer)
    # exact: the sum of the amounts as the decimals they print as (app.training.rfm.exact_amount)
    spend: Mapped[Decimal] = mapped_column(Numeric)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # when the customer's segment next changes if they buy nothing more (recency grows): the
    # refresher re-scores them then (app.service.refresher); NULL: time alone never moves them
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # why they are due when it is not time: behaviour loaded in bulk and not scored yet
    # (`segments ingest`: cause assignment), or a model switch (cause model); NULL: time
    due_cause: Mapped[Cause | None] = mapped_column(String(16))

    __table_args__ = (
        CheckConstraint("due_cause IN ('assignment', 'model')", name="due_cause"),
        # the refresher's claim: the due customers, most overdue first
        Index("ix_customer_activity_due_at", "due_at", postgresql_where=text("due_at IS NOT NULL")),
    )


class ErasureTombstone(Base):
    """An erased customer, by a keyed hash of their id (no personal data): while it stands their
    assignments are scored but not stored, so a replayed old batch cannot bring them back."""

    __tablename__ = "erasure_tombstones"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ErasureAction(StrEnum):
    ERASED = "erased"
    RESTORED = "restored"


class ErasureAudit(Base):
    """Who erased (or restored) which customer when, and what went: the record a DPO asks for.
    The customer is named by the same keyed hash as the tombstone."""

    __tablename__ = "erasure_audit"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    action: Mapped[ErasureAction] = mapped_column(String(16))
    id_hash: Mapped[str] = mapped_column(String(64), index=True)
    assignments: Mapped[int] = mapped_column(Integer, doc="history rows deleted")
    memberships: Mapped[int] = mapped_column(Integer, doc="membership rows (with hashes) deleted")
    events: Mapped[int] = mapped_column(Integer, doc="change-feed events deleted")
    purchase_events: Mapped[int] = mapped_column(
        Integer, server_default="0", doc="purchase events deleted (with their aggregates)"
    )
    api_key: Mapped[str] = mapped_column(String(64), doc="the name of the key that asked")
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint(_one_of("action", ErasureAction), name="action"),)


class IdempotencyKey(Base):
    """A storing request's Idempotency-Key, kept for SEGMENTS_IDEMPOTENCY_HOURS: inserted by the
    request's own transaction before it writes, with the answer it gives, so a retry (or a
    concurrent duplicate, which waits on the primary key) finds the answer and stores nothing,
    and a failed request leaves no key behind."""

    __tablename__ = "idempotency_keys"

    # sha256 of (the caller's key name, the route, the header's value): never the raw key
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    answer: Mapped[str | None] = mapped_column(Text)  # the response body, once written
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ModelStatus(StrEnum):
    CANDIDATE = "candidate"  # registered, never active
    ACTIVE = "active"  # what every worker serves (one at most)
    RETIRED = "retired"  # was active; a rollback goes back to the newest of these


class ModelVersion(Base):
    """A registered model version, with its artifact: every worker and replica loads from here.

    The artifact travels in the database (a skops file of ~100 KB), so replicas converge on the
    active version without a shared filesystem, and a version stays loadable for rollback after
    its folder is gone. At most one version is active and at most one is the shadow: the
    partial unique indexes make the database enforce it, whatever the callers do.
    """

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[ModelStatus] = mapped_column(String(16))
    shadow: Mapped[bool] = mapped_column(Boolean, server_default=false())
    source: Mapped[str] = mapped_column(String(1024), doc="where it was registered from")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_one_of("status", ModelStatus), name="status"),
        CheckConstraint("NOT (shadow AND status = 'active')", name="shadow_not_active"),
        Index(
            "uq_model_versions_one_active",
            "status",
            unique=True,
            postgresql_where=text(f"status = '{ModelStatus.ACTIVE}'"),
        ),
        Index(
            "uq_model_versions_one_shadow",
            "shadow",
            unique=True,
            postgresql_where=text("shadow"),
        ),
    )
