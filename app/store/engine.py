"""Creating the SQLAlchemy engine: fail fast when the database is away, recover when it is back."""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.settings import Settings


def make_engine(settings: Settings) -> Engine:
    """An engine for the settings' PostgreSQL (psycopg 3, whatever the URL's scheme said)."""
    engine = create_engine(
        settings.database,
        connect_args=connection_options(settings),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        # errors and logs must not carry customer ids or features
        hide_parameters=True,
    )
    # a connection the server dropped is replaced on checkout: recovery without a restart
    event.listen(engine, "checkin", _note_returned)
    event.listen(engine, "checkout", _refuse_dropped)
    return engine


def connection_options(settings: Settings) -> dict[str, Any]:
    """psycopg's connection options beyond the URL's, for every connection the service opens
    (the engine's pool, app.store.loop_connection)."""
    return {
        "connect_timeout": settings.db_connect_timeout,
        # a statement that hangs (a lock, a dying server) must not hold a request forever; a
        # lock wait gives up first, so the two are told apart (failure_reason)
        "options": f"-c statement_timeout={settings.db_statement_timeout_ms} "
        f"-c lock_timeout={settings.db_lock_timeout_ms}",
        # notice a silently vanished server within seconds instead of the kernel's minutes
        # (libpq ignores these on the embedded server's Unix socket)
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
    }


# A connection handed back this recently was working then, and is handed out again unchecked:
# under load (connections reused within milliseconds) the check's system call gave the GIL
# away on every write, and the writer thread then waited for the event loop to give it back
# (py-spy at c=16: 19% of the writer thread's time). A server restart within this window fails
# one write (a 503 to retry), and SQLAlchemy then replaces every pooled connection.
_CHECKED_AFTER_SECONDS = 1.0


def _note_returned(dbapi_connection: Any, record: Any) -> None:
    record.info["returned_at"] = time.monotonic()


def _refuse_dropped(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Check a pooled connection as it is handed out (dropped(); the pool then discards it and
    connects anew)."""
    if dropped(dbapi_connection.pgconn, record.info.get("returned_at")):
        raise DisconnectionError("the server closed the connection")


def dropped(pgconn: psycopg.pq.abc.PGconn, used_at: float | None) -> bool:
    """Whether an idle connection, last used at `used_at` (time.monotonic()), is gone, without
    a round trip (SQLAlchemy's pool_pre_ping costs one: 0.1-0.15 ms of a one-row write's
    ~1.5): an idle connection has nothing to read, so a socket with something to read was
    closed by the server (a restart, pg_terminate_backend, its idle timeout) or told why it
    will be. A server gone silent (no FIN) shows nothing here: the TCP keepalives find it, and
    the statement on it fails as a store outage."""
    if pgconn.status != psycopg.pq.ConnStatus.OK:
        return True
    if used_at is not None and time.monotonic() - used_at < _CHECKED_AFTER_SECONDS:
        return False
    # poll, not select: a worker may hold descriptors above select's 1,024
    readable = select.poll()
    readable.register(pgconn.socket, select.POLLIN)
    return bool(readable.poll(0))


def failure_reason(exc: BaseException) -> str | None:
    """Why a database call failed, when the database rather than the request is the cause:
    "timeout" (statement timeout), "lock" (lock timeout, deadlock), "busy" (no pooled
    connection came free), "unavailable" (refused, unreachable, died); None otherwise."""
    if isinstance(exc, PoolTimeout):
        return "busy"
    if isinstance(exc, DBAPIError):
        if isinstance(exc.orig, psycopg.errors.QueryCanceled) and not exc.connection_invalidated:
            return "timeout"
        if isinstance(exc.orig, psycopg.errors.LockNotAvailable | psycopg.errors.DeadlockDetected):
            return "lock"
        if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
            return "unavailable"
    return None


def without_statement_timeout(conn: Connection) -> None:
    """Lift the statement timeout for the rest of the caller's transaction: for bulk work an
    operator started (an ingest's one statement over half a million rows), not for requests."""
    conn.exec_driver_sql("SET LOCAL statement_timeout = 0")


def ping(conn: Connection) -> None:
    conn.execute(text("SELECT 1"))
