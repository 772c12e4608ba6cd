"""Request and response bodies of the HTTP API (the shapes ../CONTRACT.md names)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.scoring.manifest import FeatureSpec, KScore, NumericProfile
from app.scoring.validation import CUSTOMER_ID_PATTERN

# the shape the service checks (app.audience.identifiers): one @, a dotted domain, no spaces;
# written for ASCII here (addresses in other scripts are accepted as well)
EMAIL_PATTERN = r"^[!-?A-~]{1,64}@[!-\-/-?A-~]+(\.[!-\-/-?A-~]+)+$"
# RFC 3339 as Python and PostgreSQL read it (app.service.event_input.parse_moment): years 1 to
# 9999, no leap second, Z or an offset within ±15:59
TIME_PATTERN = (
    r"^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-[0-9]{2}-[0-9]{2}"
    r"[Tt][0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]+)?(Z|[+-](0[0-9]|1[0-5]):[0-5][0-9])$"
)
# event and order ids: 1 to 128 characters, no control characters
EVENT_ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"
Email = Annotated[
    str | None,
    Field(
        default=None,
        max_length=254,
        pattern=EMAIL_PATTERN,
        description="optional: stored only as the SHA-256 of the trimmed, lower-cased address",
        examples=["Jane.Doe@example.com"],
    ),
]
Phone = Annotated[
    str | None,
    Field(
        default=None,
        max_length=64,
        description="optional: a valid number for its country, stored only as SHA-256 hashes of "
        "its E.164 form (+ and country code, or SEGMENTS_PHONE_DEFAULT_REGION)",
        examples=["+44 20 7946 0958"],
    ),
]


class ProblemOut(BaseModel):
    loc: str = Field(examples=["customers[3].features.monetary"])
    problem: str


class ErrorDetailOut(BaseModel):
    code: str = Field(examples=["invalid_input"])
    message: str = Field(description="one sentence a person can act on")
    details: list[ProblemOut]


class ErrorOut(BaseModel):
    """Every error the service answers, in the contract's shape."""

    error: ErrorDetailOut


class CustomerIn(BaseModel):
    """Documents the request; the service validates it (app.scoring.validation) for speed."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(pattern=CUSTOMER_ID_PATTERN, max_length=128, examples=["12347"])
    features: dict[str, Any] = Field(
        description="the model's features by name; GET /v1/models/active lists names, types and ranges",
        examples=[{"recency_days": 12, "frequency": 7, "monetary": 1830.5}],
    )
    email: Email = None
    phone: Phone = None
    consent: ConsentIn | None = Field(
        default=None, description="optional: flags not sent keep their earlier value"
    )
    observed_at: datetime | None = Field(
        default=None,
        description="optional: the time the features describe (RFC 3339 with a zone, not in the "
        "future); the assignment's assigned_at. An older observation than the customer's stored "
        "one goes to the history and does not change their current segment",
        examples=["2026-11-23T09:00:00Z"],
    )


class ConsentIn(BaseModel):
    """What the customer agreed to. Advertising audiences hold only customers with advertising
    true; personalization serves everyone but customers with personalization false."""

    model_config = ConfigDict(extra="forbid")

    personalization: bool | None = None
    advertising: bool | None = None


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customers: list[CustomerIn] = Field(
        min_length=1, description="at most SEGMENTS_MAX_BATCH customers"
    )


class EventIn(BaseModel):
    """A purchase (or return): documents the request; the service validates it
    (app.service.event_input) for speed."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(
        pattern=EVENT_ID_PATTERN,
        max_length=128,
        description="your id for the event: a repeat is acknowledged and ignored",
        examples=["o-1001"],
    )
    customer_id: str = Field(pattern=CUSTOMER_ID_PATTERN, max_length=128, examples=["12347"])
    occurred_at: datetime = Field(
        json_schema_extra={"pattern": TIME_PATTERN},
        description="when it happened (RFC 3339, with a time zone); at most 5 minutes ahead of "
        "the service's clock",
        examples=["2026-12-01T10:15:00Z"],
    )
    amount: float = Field(
        ge=-1e9,
        le=1e9,
        description="its value in the model's currency (GET /v1/models/active)",
        examples=[84.5],
    )
    type: Literal["order", "return"] = Field(
        description="returns, cancellations (a negative amount, an order id starting with C) "
        "are stored but do not count, as in training"
    )
    order_id: str | None = Field(
        default=None,
        pattern=EVENT_ID_PATTERN,
        max_length=128,
        description="lines of one order count as one purchase",
    )
    currency: str | None = Field(
        default=None, pattern=r"^[A-Za-z]{3}$", description="must be the model's if sent"
    )
    email: Email = None
    phone: Phone = None
    consent: ConsentIn | None = None


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1, description="at most SEGMENTS_MAX_BATCH events")


class SegmentRef(BaseModel):
    id: int
    key: str
    name: str


class AssignmentOut(BaseModel):
    customer_id: str
    segment: SegmentRef
    model_version: str
    distance: float = Field(
        description="distance to the segment's centre in the model's scaled space"
    )
    confidence: float = Field(
        description="1 - nearest/second-nearest centre distance: 0 on a border, 1 at a centre"
    )
    assigned_at: datetime


class BatchOut(BaseModel):
    model_version: str
    assignments: list[AssignmentOut]


class EventCounts(BaseModel):
    stored: int = Field(description="events stored now")
    duplicate: int = Field(description="event ids stored before (retries): ignored")
    suppressed: int = Field(description="events of erased customers: acknowledged, not stored")


class EventsOut(BaseModel):
    model_version: str
    customers: list[AssignmentOut] = Field(
        description="each customer of the events once, with their segment now"
    )
    events: EventCounts
    unscored: list[str] = Field(
        description="customers with no purchase that counts yet (say, only returns)"
    )


class HistoryOut(BaseModel):
    assignments: list[AssignmentOut]


class SegmentOut(BaseModel):
    id: int
    key: str
    name: str
    description: str
    share: float = Field(description="share of training customers in this segment")
    size: int = Field(description="training customers in this segment")
    profile: dict[str, NumericProfile] = Field(
        description="per-feature median and quartiles, original units"
    )
    category_profile: dict[str, dict[str, float]]


class SegmentsOut(BaseModel):
    model_version: str
    segments: list[SegmentOut]


class MemberOut(BaseModel):
    customer_id: str
    entered_at: datetime = Field(description="when the customer entered the segment")
    email_sha256: str | None = Field(description="SHA-256 of the normalised e-mail, if sent")
    phone_sha256: str | None = Field(
        description="SHA-256 of the phone number: E.164 with + for identifiers=google, "
        "digits only for identifiers=meta"
    )


class MembersOut(BaseModel):
    segment: str
    purpose: str = Field(
        description="whose consent the page honours: advertising or personalization"
    )
    members: list[str]
    records: list[MemberOut] | None = Field(
        default=None, description="only with ?identifiers=google|meta: the members with hashes"
    )
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null on the last page"
    )


class ChangeOut(BaseModel):
    id: int = Field(
        description="unique, never reused; increases within one customer (page with the cursor: "
        "across customers a smaller id may follow a larger one)"
    )
    customer_id: str
    event: str = Field(description="entered or exited")
    segment: SegmentRef
    model_version: str = Field(description="the model whose assignment made the change")
    confidence: float
    at: datetime = Field(description="when the assignment that made the change was made")
    cause: str = Field(
        description="assignment (the customer moved), consent (they joined or left this "
        "purpose's audience while staying in the segment) or erasure (they were erased: drop "
        "them; the notice is kept SEGMENTS_ERASURE_NOTICE_DAYS)"
    )


class ChangesOut(BaseModel):
    purpose: str = Field(
        description="whose consent the feed honours: advertising or personalization"
    )
    changes: list[ChangeOut]
    next_cursor: str = Field(description="pass as ?since= to continue; given even when empty")
    has_more: bool = Field(description="another page is ready now")


class ErasureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_ids: list[Annotated[str, Field(pattern=CUSTOMER_ID_PATTERN, max_length=128)]] = Field(
        min_length=1, max_length=10_000, description="1 to 10,000 customer ids to erase"
    )


class ErasureOut(BaseModel):
    customer_id: str
    found: bool = Field(description="something was stored and is now deleted")
    already_erased: bool = Field(description="a tombstone stood before this request")
    assignments: int = Field(description="history rows deleted")
    memberships: int = Field(description="membership rows (with hashes and consent) deleted")
    events: int = Field(description="change-feed events deleted")
    purchase_events: int = Field(description="purchase events deleted, with their aggregates")


class ErasuresOut(BaseModel):
    erased: int = Field(description="customers who had data, now deleted")
    tombstoned: int = Field(description="customers whose assignments are no longer stored")
    customers: list[ErasureOut]


class AuditOut(BaseModel):
    action: str = Field(description="erased or restored")
    assignments: int
    memberships: int
    events: int
    purchase_events: int
    api_key: str = Field(description="the name of the key that asked")
    at: datetime


class AuditTrailOut(BaseModel):
    customer_id: str
    erased: bool = Field(description="a tombstone stands now")
    audit: list[AuditOut]


class ModelOut(BaseModel):
    version: str
    kind: str
    active: bool
    status: str = Field(description="candidate, active or retired (the registry's word)")
    shadow: bool = Field(description="live traffic is also scored by it, for comparison")
    trained_at: datetime
    registered_at: datetime | None
    activated_at: datetime | None
    retired_at: datetime | None
    artifact_sha256: str
    segments: int
    silhouette: float
    davies_bouldin: float


class ActiveModelOut(ModelOut):
    features: list[FeatureSpec]
    k_search: list[KScore]
    training_data: dict[str, Any]


class ModelDetailOut(ActiveModelOut):
    segment_keys: list[SegmentRef]
    lineage: dict[str, Any] | None = Field(
        description="for a retrained model: which segments kept their identity, which are new "
        "and which vanished"
    )


class ModelsOut(BaseModel):
    models: list[ModelOut] = Field(description="newest registration first")
    active: str | None = Field(description="the registry's active version")
    shadow: str | None
    served: str = Field(description="the version the answering process serves right now")


class ActivationOut(BaseModel):
    active: ModelOut
    previous: str | None = Field(description="the version it replaced: activate it to roll back")
    warning: str | None = Field(
        default=None,
        description="set when the new model was not retrained from the one it replaced (no "
        "--previous): how many stored customers change segment",
    )
    moved_share: float | None = Field(
        default=None,
        description="share of the stored customers sampled whose segment changes, when measured",
    )


class ShadowOut(BaseModel):
    shadow: str | None


class SegmentChangeOut(BaseModel):
    key: str
    old_name: str | None
    new_name: str | None
    old_customers: int
    new_customers: int
    stayed: int
    old_medians: dict[str, float] | None
    new_medians: dict[str, float] | None


class ComparisonOut(BaseModel):
    old_version: str
    new_version: str
    customers: int
    skipped: int
    transitions: dict[str, dict[str, int]]
    moved_share: float
    agreement: float
    adjusted_rand_index: float
    segments: list[SegmentChangeOut]
