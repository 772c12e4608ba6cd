"""Assigning customers to segments and reading what was stored: validate, score, store, count.

Knows nothing of HTTP; raises AppError subclasses that the API renders.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.errors import (
    BatchTooLarge,
    CustomerNotFound,
    InvalidCursor,
    InvalidFeatures,
    SegmentNotFound,
    StoreUnavailable,
)
from app.metrics.registry import ASSIGNMENTS, INFERENCE_DURATION, STORE_FAILURES, UNKNOWN_CATEGORIES
from app.scoring.model import Problem, SegmentModel
from app.store import repository
from app.store.repository import AssignmentRow


@dataclass(frozen=True)
class CustomerInput:
    customer_id: str
    features: Mapping[str, Any]


@dataclass(frozen=True)
class MembersPage:
    segment: str
    members: list[str]
    next_cursor: str | None


class AssignmentService:
    def __init__(self, model: SegmentModel, engine: Engine, max_batch: int) -> None:
        self.model = model
        self.engine = engine
        self.max_batch = max_batch

    def assign(self, customer: CustomerInput, *, persist: bool) -> AssignmentRow:
        """Score one customer and, unless persist is False, store it before returning."""
        rows = self._score([customer], prefix="features", mode="single")
        if persist:
            self._store(rows, "assign")
        return rows[0]

    def assign_batch(
        self, customers: Sequence[CustomerInput], *, persist: bool
    ) -> list[AssignmentRow]:
        """Score customers in order; all are stored in one transaction, or none if any row is bad."""
        if len(customers) > self.max_batch:
            raise BatchTooLarge(len(customers), self.max_batch)
        rows = self._score(customers, prefix="customers[{i}].features", mode="batch")
        if persist:
            self._store(rows, "assign_batch")
        return rows

    def current(self, customer_id: str) -> AssignmentRow:
        with self._connection("lookup") as conn:
            row = repository.current_membership(conn, customer_id)
        if row is None:
            raise CustomerNotFound(customer_id)
        return row

    def history(self, customer_id: str, limit: int) -> list[AssignmentRow]:
        with self._connection("lookup") as conn:
            rows = repository.customer_history(conn, customer_id, limit)
        if not rows:
            raise CustomerNotFound(customer_id)
        return rows

    def erase(self, customer_id: str) -> None:
        with self.transaction("erase") as conn:
            if repository.erase_customer(conn, customer_id) == 0:
                raise CustomerNotFound(customer_id)

    def members(self, segment_key: str, cursor: str | None, limit: int) -> MembersPage:
        if segment_key not in self.model.segments_by_key:
            raise SegmentNotFound(segment_key, self.model.segments_by_key)
        after = _decode_cursor(cursor) if cursor else None
        with self._connection("lookup") as conn:
            # one extra row tells whether another page follows without a count query
            ids = repository.segment_members(conn, segment_key, after, limit + 1)
        more = len(ids) > limit
        ids = ids[:limit]
        return MembersPage(segment_key, ids, _encode_cursor(ids[-1]) if more else None)

    def store_ready(self) -> str | None:
        """None when the store answers, else why not."""
        try:
            with self.engine.connect() as conn:
                repository.ping(conn)
        except (OperationalError, InterfaceError, PoolTimeout, DBAPIError) as exc:
            return _reason(exc)
        return None

    def _score(
        self, customers: Sequence[CustomerInput], *, prefix: str, mode: str
    ) -> list[AssignmentRow]:
        started = time.perf_counter()
        model = self.model
        clean_rows: list[dict[str, Any]] = []
        problems: list[Problem] = []
        for i, customer in enumerate(customers):
            clean, found = model.validate(customer.features, prefix.format(i=i))
            clean_rows.append(clean)
            problems.extend(found)
        if problems:
            bad_rows = len({p.loc.split(".features")[0] for p in problems})
            what = (
                "customer's features are"
                if mode == "single"
                else f"batch has {bad_rows} invalid row(s), so it is"
            )
            raise InvalidFeatures(
                f"The {what} invalid; nothing was stored. Fix the fields listed in details and resend.",
                problems,
            )
        scores = model.score(clean_rows)
        INFERENCE_DURATION.labels(mode).observe(time.perf_counter() - started)
        now = datetime.now(UTC)
        rows = []
        for i, customer in enumerate(customers):
            segment = model.segments_by_cluster[int(scores.clusters[i])]
            rows.append(
                AssignmentRow(
                    customer_id=customer.customer_id,
                    segment_id=segment.id,
                    segment_key=segment.key,
                    model_version=model.version,
                    distance=round(float(scores.distances[i]), 6),
                    confidence=round(float(scores.confidences[i]), 6),
                    features=clean_rows[i],
                    assigned_at=now,
                )
            )
            ASSIGNMENTS.labels(model.version, segment.key).inc()
            for feature in model.unknown_categories(clean_rows[i]):
                UNKNOWN_CATEGORIES.labels(model.version, feature).inc()
        return rows

    def _store(self, rows: list[AssignmentRow], operation: str) -> None:
        with self.transaction(operation) as conn:
            repository.store_assignments(conn, rows)

    @contextmanager
    def transaction(self, operation: str) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back on any error."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            STORE_FAILURES.labels(operation).inc()
            raise StoreUnavailable(_reason(exc)) from exc
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            STORE_FAILURES.labels(operation).inc()
            raise StoreUnavailable(_reason(exc)) from exc

    @contextmanager
    def _connection(self, operation: str) -> Iterator[Connection]:
        # reads use a transaction too: it is the same code path and rolls back harmlessly
        with self.transaction(operation) as conn:
            yield conn


def _reason(exc: Exception) -> str:
    # the driver's first line, never the URL or credentials
    original = getattr(exc, "orig", None) or exc
    first_line = (
        str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    )
    return f"database unavailable ({type(original).__name__}: {first_line[:200]})"


def _encode_cursor(customer_id: str) -> str:
    return base64.urlsafe_b64encode(f"m1:{customer_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor() from exc
    if not text.startswith("m1:"):
        raise InvalidCursor()
    return text[3:]
