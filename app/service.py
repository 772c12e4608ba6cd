"""Assigning customers to segments and reading what was stored: validate, score, store, count.

Knows nothing of HTTP: takes parsed JSON, returns rows, raises AppError subclasses.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.audience.consent import Purpose, allows
from app.audience.profile import CustomerProfile, split_profiles
from app.errors import (
    BatchTooLarge,
    ConsentWithheld,
    CustomerNotFound,
    InvalidCursor,
    InvalidFeatures,
    NotErased,
    SegmentNotFound,
    StoreUnavailable,
)
from app.lifecycle.shadow import ShadowScorer
from app.metrics.registry import (
    ASSIGNMENTS,
    INFERENCE_DURATION,
    STORE_FAILURES,
    SUPPRESSED_ASSIGNMENTS,
    UNKNOWN_CATEGORIES,
)
from app.scoring.model import SegmentModel
from app.scoring.validation import Problem, ValidBatch, customer_id_problem
from app.store import audiences, repository
from app.store import erasure as erasure_store
from app.store.audiences import MemberRow, MembershipChange
from app.store.erasure import Erasure
from app.store.group_commit import GroupCommitter
from app.store.repository import AssignmentBatch, AssignmentRow, IdHash

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ChangesPage:
    changes: list[MembershipChange]
    next_cursor: str  # always given: poll again with it, even when this page was empty
    has_more: bool


@dataclass(frozen=True)
class MembersPage:
    segment: str
    members: list[MemberRow]
    next_cursor: str | None


@dataclass(frozen=True)
class AudienceExport:
    """A whole audience as one snapshot: `chunks` yields its members in id order (iterate it once,
    then close it), and `feed_cursor` is the change-feed position of the same snapshot, so a
    consumer can follow the feed from exactly where the export stands."""

    segment: str
    feed_cursor: str
    chunks: Iterator[list[MemberRow]]


class AssignmentService:
    def __init__(
        self,
        model: SegmentModel,
        engine: Engine,
        max_batch: int,
        *,
        id_hash: IdHash,
        phone_region: str | None = None,
        erasure_notice_days: int = 0,
    ) -> None:
        # segment key -> name for every model this process served: history rows made by an
        # earlier version still get their names (keys, and so names, survive retraining)
        self.segment_names: dict[str, str] = {}
        self.model = model
        self.engine = engine
        self.max_batch = max_batch
        self.committer: GroupCommitter | None = None  # set by the lifespan once the loop runs
        self.schema_head: str | None = None  # the migration the code expects, for readiness
        self.shadow: ShadowScorer | None = None  # set by the lifespan: live traffic for a shadow
        self.id_hash = id_hash  # names erased customers in tombstones (app.audience.erasure)
        self.phone_region = phone_region  # for phone numbers sent without a country code
        self.erasure_notice_days = erasure_notice_days  # how long feeds announce an erasure
        self.open_exports = 0  # streamed exports holding a connection (counted on the loop)

    @property
    def model(self) -> SegmentModel:
        """The active model. Swapped whole by the watcher, so each request reads it once and
        finishes on the model it started with."""
        return self._model

    @model.setter
    def model(self, model: SegmentModel) -> None:
        self.segment_names = {**self.segment_names, **model.segment_names}
        self._model = model

    # --- assigning -----------------------------------------------------------------------------

    def score_single(self, payload: Any) -> AssignmentBatch:
        """Validate and score one request body `{"customer_id", "features"}` (a batch of one)."""
        model = self.model
        customers, profiles = self._profiles([payload], prefix="", what="The customer's data is")
        valid = self._validate(model, customers, prefix="", what="The customer's features are")
        return self._score(model, valid, profiles, mode="single")

    async def store_one(self, batch: AssignmentBatch) -> None:
        """Store one assignment through group commit; returns once it is committed."""
        assert self.committer is not None, "the lifespan starts the group committer"
        await self.committer.submit(batch.row(0))
        self.count(batch)

    def assign_batch(self, payload: Any, *, persist: bool) -> AssignmentBatch:
        """Score a batch body `{"customers": [...]}` in order; store all of it in one transaction."""
        customers = _customers_of(payload)
        if len(customers) > self.max_batch:
            raise BatchTooLarge(len(customers), self.max_batch)
        model = self.model
        stripped, profiles = self._profiles(customers, prefix="customers", what="")
        valid = self._validate(model, stripped, prefix="customers", what="")
        batch = self._score(model, valid, profiles, mode="batch")
        if persist:
            self.write(batch, "assign_batch")
        self.count(batch)
        return batch

    def write(self, batch: AssignmentBatch, operation: str = "assign") -> None:
        """Store the batch; customers with an erasure tombstone are scored but not stored."""
        with self.transaction(operation, writing=True) as conn:
            suppressed = repository.store_batch(conn, batch, self.id_hash)
        if suppressed:
            erased = set(suppressed)
            SUPPRESSED_ASSIGNMENTS.inc(sum(1 for c in batch.customer_ids if c in erased))

    def count(self, batch: AssignmentBatch) -> None:
        """Count assignments per segment once they are final (stored, or scored only)."""
        for (version, key), number in Counter(
            zip(batch.model_versions, batch.segment_keys, strict=True)
        ).items():
            ASSIGNMENTS.labels(version, key).inc(number)

    def _profiles(
        self, customers: Sequence[Any], *, prefix: str, what: str
    ) -> tuple[Sequence[Any], list[CustomerProfile | None] | None]:
        """Split off and hash e-mail, phone and consent; their problems fail the request."""
        stripped, profiles, problems = split_profiles(customers, prefix, self.phone_region)
        if problems:
            if not what:
                bad_rows = len({p.loc.split("]")[0] for p in problems})
                what = f"{bad_rows} of the batch's {len(customers)} customers have invalid data;"
            else:
                what += " invalid;"
            raise InvalidFeatures(
                f"{what} nothing was stored. Fix the fields listed in details and resend.",
                problems,
            )
        return stripped, profiles

    @staticmethod
    def _validate(
        model: SegmentModel, customers: Sequence[Any], *, prefix: str, what: str
    ) -> ValidBatch:
        valid, problems = model.validator.customers(customers, prefix)
        if problems or valid is None:
            if not what:
                bad_rows = len({p.loc.split("]")[0] for p in problems})
                what = f"{bad_rows} of the batch's {len(customers)} customers are"
            raise InvalidFeatures(
                f"{what} invalid; nothing was stored. Fix the fields listed in details and resend.",
                problems,
            )
        return valid

    def _score(
        self,
        model: SegmentModel,
        valid: ValidBatch,
        profiles: list[CustomerProfile | None] | None,
        *,
        mode: str,
    ) -> AssignmentBatch:
        started = time.perf_counter()
        scores = model.score_arrays(valid.numeric, valid.categorical)
        INFERENCE_DURATION.labels(mode).observe(time.perf_counter() - started)
        for feature, unknown in model.unknown_categories(valid.categorical).items():
            UNKNOWN_CATEGORIES.labels(model.version, feature).inc(unknown)
        rows = len(valid.customer_ids)
        clusters = scores.clusters.tolist()
        keys = [model.segment_keys_by_cluster[c] for c in clusters]
        if self.shadow is not None:
            self.shadow.offer(valid, model, keys)
        return AssignmentBatch(
            customer_ids=valid.customer_ids,
            segment_ids=[model.segment_ids_by_cluster[c] for c in clusters],
            segment_keys=keys,
            model_versions=[model.version] * rows,
            distances=np.round(scores.distances, 6).tolist(),
            confidences=np.round(scores.confidences, 6).tolist(),
            features=valid.features,
            assigned_at=[datetime.now(UTC)] * rows,
            profiles=profiles,
        )

    # --- reading and erasing -----------------------------------------------------------------

    def current(
        self, customer_id: str, purpose: Purpose = Purpose.PERSONALIZATION
    ) -> AssignmentRow:
        """The customer's current segment, if their consent allows `purpose` (app.audience.consent)."""
        _check_customer_id(customer_id)
        with self.transaction("lookup") as conn:
            row = repository.current_membership(conn, customer_id)
        if row is None:
            raise CustomerNotFound(customer_id)
        consent = row.profile.consent_for(purpose) if row.profile is not None else None
        if not allows(purpose, consent):
            if purpose is Purpose.ADVERTISING:
                # the same answer as for an unknown id: an ad platform's key must not learn
                # that a customer exists, nor that they refused advertising
                raise CustomerNotFound(customer_id)
            raise ConsentWithheld(customer_id, purpose, consent)
        return row

    def history(self, customer_id: str, limit: int) -> list[AssignmentRow]:
        _check_customer_id(customer_id)
        with self.transaction("lookup") as conn:
            rows = repository.customer_history(conn, customer_id, limit)
        if not rows:
            raise CustomerNotFound(customer_id)
        return rows

    def erase(self, customer_ids: Sequence[str], api_key: str) -> list[Erasure]:
        """Erase the customers and leave a tombstone for each (app.store.erasure.erase_customers)."""
        for customer_id in customer_ids:
            _check_customer_id(customer_id)
        with self.transaction("erase", writing=True) as conn:
            return erasure_store.erase_customers(
                conn,
                customer_ids,
                self.id_hash,
                api_key,
                datetime.now(UTC),
                self.erasure_notice_days,
            )

    def restore(self, customer_id: str, api_key: str) -> None:
        """Lift the customer's tombstone: their assignments are stored again from now on."""
        _check_customer_id(customer_id)
        with self.transaction("erase", writing=True) as conn:
            if not erasure_store.restore_customer(
                conn, customer_id, self.id_hash, api_key, datetime.now(UTC)
            ):
                raise NotErased(customer_id)

    def erasure_audit(self, customer_id: str) -> list[dict[str, Any]]:
        _check_customer_id(customer_id)
        with self.transaction("lookup") as conn:
            return erasure_store.erasure_audit_rows(conn, customer_id, self.id_hash)

    def members(
        self, segment_key: str, purpose: Purpose, cursor: str | None, limit: int
    ) -> MembersPage:
        self._check_segment(segment_key)
        after = _decode_members_cursor(cursor) if cursor else None
        with self.transaction("lookup") as conn:
            # one extra row tells whether another page follows, without a count query
            rows = audiences.segment_members(conn, segment_key, purpose, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return MembersPage(
            segment_key,
            rows,
            _encode_cursor(MEMBERS_CURSOR, rows[-1].customer_id) if more else None,
        )

    @contextmanager
    def export(
        self, segment_key: str, purpose: Purpose, chunk: int = 2_000
    ) -> Iterator[AudienceExport]:
        """The whole audience from one snapshot, streamed `chunk` members at a time.

        One connection and one read transaction stay open while the caller iterates (REPEATABLE
        READ on PostgreSQL, so the members and the feed position agree with each other).
        """
        self._check_segment(segment_key)
        with self.transaction("export") as conn:
            audiences.begin_snapshot(conn)
            position = audiences.feed_position(conn)
            chunks = audiences.stream_members(conn, segment_key, purpose, chunk)
            try:
                yield AudienceExport(segment_key, feed_cursor(position), chunks)
            finally:
                # closed here, on this connection, before it goes back to the pool: left to the
                # garbage collector, its CLOSE could hit another request's transaction
                chunks.close()

    def changes(
        self, segment_key: str | None, purpose: Purpose, cursor: str | None, limit: int
    ) -> ChangesPage:
        """A purpose's entered/exited events after the cursor, in commit order (one segment's,
        or all)."""
        if segment_key is not None and segment_key not in self.segment_names:
            raise SegmentNotFound(segment_key, self.model.segments_by_key)
        after = _decode_changes_cursor(cursor) if cursor else 0
        with self.transaction("lookup") as conn:
            rows = audiences.membership_changes(conn, segment_key, purpose, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1].id if rows else after
        return ChangesPage(rows, feed_cursor(last), more)

    def _check_segment(self, segment_key: str) -> None:
        if segment_key not in self.model.segments_by_key:
            raise SegmentNotFound(segment_key, self.model.segments_by_key)

    def store_ready(self) -> str | None:
        """None when the store answers and is migrated, else why not."""
        try:
            with self.engine.connect() as conn:
                repository.ping(conn)
                revision = repository.schema_revision(conn)
        except (OperationalError, InterfaceError, PoolTimeout, DBAPIError) as exc:
            log.warning("store not ready: %s", exc)
            return "the database does not answer (connection refused or timed out)"
        if self.schema_head is not None and revision != self.schema_head:
            return f"the database schema is at {revision or 'nothing'}, not {self.schema_head}: run `segments migrate`"
        return None

    @contextmanager
    def transaction(self, operation: str, *, writing: bool = False) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back on any error."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            raise self._unavailable(operation, writing, exc) from exc
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            raise self._unavailable(operation, writing, exc) from exc

    def store_call(self, work: Callable[[], T], operation: str = "models") -> T:
        """Run `work` (which uses the store itself); a store outage becomes a 503."""
        try:
            return work()
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            raise self._unavailable(operation, False, exc) from exc
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            raise self._unavailable(operation, False, exc) from exc

    @staticmethod
    def _unavailable(operation: str, writing: bool, exc: Exception) -> StoreUnavailable:
        STORE_FAILURES.labels(operation).inc()
        # the driver's message names hosts and users: it goes to the log, not to the client
        log.warning("store unavailable during %s: %s", operation, exc)
        return StoreUnavailable(writing=writing)


def _customers_of(payload: Any) -> list[Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("customers"), list):
        raise InvalidFeatures(
            "The body must be an object with a list of customers; see POST /v1/assignments/batch in /docs.",
            [Problem("customers", "is required: a list of {customer_id, features} objects")],
        )
    extra = [key for key in payload if key != "customers"]
    if extra:
        raise InvalidFeatures(
            "The body has fields other than customers; remove them and resend.",
            [Problem(key, "is not a field of a batch") for key in extra],
        )
    if not payload["customers"]:
        raise InvalidFeatures(
            "The batch is empty; send at least one customer.", [Problem("customers", "is empty")]
        )
    return list(payload["customers"])


def _check_customer_id(customer_id: str) -> None:
    problem = customer_id_problem(customer_id)
    if problem:
        raise InvalidFeatures(
            f"The customer id is invalid: it {problem}.", [Problem("customer_id", problem)]
        )


# Cursors are opaque to clients: a kind prefix (m1 audience members, e1 change events) and the
# last position, base64url. The prefix keeps one kind of cursor from being used for the other.
MEMBERS_CURSOR = "m1:"
CHANGES_CURSOR = "e1:"


def _encode_cursor(kind: str, position: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}{position}".encode()).decode().rstrip("=")


def _decode_cursor(kind: str, cursor: str, parameter: str = "cursor") -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor(parameter) from exc
    if not text.startswith(kind):
        raise InvalidCursor(parameter)
    return text[len(kind) :]


def feed_cursor(event_id: int) -> str:
    """The change-feed cursor that continues after event `event_id`."""
    return _encode_cursor(CHANGES_CURSOR, str(event_id))


def _decode_members_cursor(cursor: str) -> str:
    customer_id = _decode_cursor(MEMBERS_CURSOR, cursor)
    if customer_id_problem(customer_id):
        raise InvalidCursor()
    return customer_id


def _decode_changes_cursor(cursor: str) -> int:
    event_id = _decode_cursor(CHANGES_CURSOR, cursor, "since")
    # ASCII digits only ("²" is a digit to str.isdigit) and within the id column's bigint
    if not (event_id.isascii() and event_id.isdigit()) or int(event_id) >= 2**63:
        raise InvalidCursor("since")
    return int(event_id)
