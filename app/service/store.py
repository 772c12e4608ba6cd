"""The database as the services use it: one transaction per operation, committed when the
block ends and rolled back on any error; the database failing a request (down, a statement or
lock timeout, a saturated pool) becomes StoreFailed with its reason (a 503 over HTTP), counted
per operation and reason; whether the database answers (segment_store_up); and whether the
store is ready to serve."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.errors import StoreFailed, StoreReason
from app.metrics.registry import STORE_FAILURES, STORE_UP
from app.store.engine import failure_reason, ping
from app.store.migrate import head_revision, schema_revision

log = logging.getLogger(__name__)
T = TypeVar("T")
OPERATIONS = (
    "assign",
    "assign_batch",
    "events",
    "refresh",
    "lookup",
    "export",
    "erase",
    "models",
)


class Store:
    """Lives with the services, not in app/store: it counts outages in metrics and speaks in
    the services' errors, which the store itself must not know of."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._up: bool | None = None  # whether the database answered the last call

    @contextmanager
    def transaction(self, operation: str, *, writing: bool = False) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back on any error."""
        with self.failures_as_errors(operation, writing=writing), self.engine.begin() as conn:
            yield conn

    def call(self, work: Callable[[], T], operation: str = "models") -> T:
        """Run `work` (which opens its own transactions, e.g. the model registry's)."""
        with self.failures_as_errors(operation):
            return work()

    @contextmanager
    def failures_as_errors(self, operation: str, *, writing: bool = False) -> Iterator[None]:
        """The database failing the work becomes StoreFailed with the reason; other errors
        (the request's own) pass through."""
        try:
            yield
        except (OperationalError, InterfaceError, PoolTimeout, DBAPIError) as exc:
            reason = failure_reason(exc)
            self._answered(reason != "unavailable")
            if reason is None:
                raise
            STORE_FAILURES.labels(operation, reason).inc()
            # the driver's message names hosts and users: it goes to the log, not the client
            log.warning("store failed during %s (%s): %s", operation, reason, exc)
            raise StoreFailed(StoreReason(reason), writing=writing) from exc
        else:
            self._answered(True)

    def _answered(self, up: bool) -> None:
        """segment_store_up follows the last call's outcome (set on a change only: this runs
        on every request)."""
        if up is not self._up:
            STORE_UP.set(1 if up else 0)
            self._up = up

    def readiness(self) -> str | None:
        """None when the store answers and is migrated, else why not."""
        try:
            with self.engine.connect() as conn:
                ping(conn)
                revision = schema_revision(conn)
        except (OperationalError, InterfaceError, PoolTimeout, DBAPIError) as exc:
            log.warning("store not ready: %s", exc)
            self._answered(False)
            return "the database does not answer (connection refused or timed out)"
        self._answered(True)
        expected = head_revision()  # the migration this code ships
        if revision != expected:
            return (
                f"the database schema is at {revision or 'nothing'}, not {expected}: "
                "run `segments migrate`"
            )
        return None
