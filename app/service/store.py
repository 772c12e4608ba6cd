"""The database as the services use it: one transaction per operation, committed when the
block ends and rolled back on any error; a store outage becomes StoreUnavailable (a 503 over
HTTP), counted per operation; and whether the store is ready to serve."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.errors import StoreUnavailable
from app.metrics.registry import STORE_FAILURES
from app.store.engine import ping
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

    @contextmanager
    def transaction(self, operation: str, *, writing: bool = False) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back on any error."""
        with self.outage_as_unavailable(operation, writing=writing), self.engine.begin() as conn:
            yield conn

    def call(self, work: Callable[[], T], operation: str = "models") -> T:
        """Run `work` (which opens its own transactions, e.g. the model registry's)."""
        with self.outage_as_unavailable(operation):
            return work()

    @contextmanager
    def outage_as_unavailable(self, operation: str, *, writing: bool = False) -> Iterator[None]:
        """A refused or timed-out connection, or one that died mid-way, becomes StoreUnavailable."""
        try:
            yield
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            raise _unavailable(operation, writing, exc) from exc
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            raise _unavailable(operation, writing, exc) from exc

    def readiness(self) -> str | None:
        """None when the store answers and is migrated, else why not."""
        try:
            with self.engine.connect() as conn:
                ping(conn)
                revision = schema_revision(conn)
        except (OperationalError, InterfaceError, PoolTimeout, DBAPIError) as exc:
            log.warning("store not ready: %s", exc)
            return "the database does not answer (connection refused or timed out)"
        expected = head_revision()  # the migration this code ships
        if revision != expected:
            return (
                f"the database schema is at {revision or 'nothing'}, not {expected}: "
                "run `segments migrate`"
            )
        return None


def _unavailable(operation: str, writing: bool, exc: Exception) -> StoreUnavailable:
    STORE_FAILURES.labels(operation).inc()
    # the driver's message names hosts and users: it goes to the log, not to the client
    log.warning("store unavailable during %s: %s", operation, exc)
    return StoreUnavailable(writing=writing)
