"""Statements sent through the driver connection SQLAlchemy holds, in the caller's transaction,
where SQLAlchemy's own execution costs round trips the hot paths cannot afford:

- `copy_in`: COPY … FROM STDIN, the bulk path for history rows and ingested events. Callers
  build the payload in COPY's text format (one line a row, tabs between values, `\\N` for NULL),
  escaping text with `copy_text`.
- `pipelined`: several statements in one round trip (psycopg's pipeline mode). SQLAlchemy reads
  each statement's result as soon as it is sent, which a pipeline cannot give, so the statements
  (SQLAlchemy `text()` clauses with bound parameters) are compiled with PostgreSQL's numbered
  placeholders and run on the driver's raw cursors.

Driver errors are raised as SQLAlchemy raises them (DBAPIError's family, the connection
invalidated when it died), so callers handle one family whichever way a statement went.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, cast

import psycopg
from sqlalchemy import Connection, Dialect, TextClause
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, StatementError

NULL = "\\N"
# a statement for a pipeline: the clause and its bound parameters
Statement = tuple[TextClause, Mapping[str, Any] | None]


def copy_in(conn: Connection, statement: str, payload: str) -> None:
    """Run a `COPY … FROM STDIN` with `payload` in the caller's transaction."""
    with copying(conn, statement) as copy:
        copy.write(payload)


@contextmanager
def copying(conn: Connection, statement: str) -> Iterator[psycopg.Copy]:
    """A `COPY … FROM STDIN` in the caller's transaction, to write to: the server takes the
    rows in as they arrive, while the block goes on; it ends (and waits for the server) when
    the block does."""
    with (
        _driver_errors(conn, statement),
        _driver(conn).cursor() as cursor,
        cursor.copy(statement) as copy,
    ):
        yield copy


def copy_text(value: str) -> str:
    """A text value in COPY's text format: backslash, tab and line breaks escaped."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


def pipelined(
    conn: Connection,
    statements: Sequence[Statement],
    *,
    commit: bool = False,
    rows_of: int = -1,
) -> list[tuple[Any, ...]]:
    """Run the statements in order in one round trip (the transaction's BEGIN too, when they are
    its first); returns the rows of the last one (or of the one at index `rows_of`). The first
    that fails raises, and the transaction is then aborted: the caller's block rolls it back.
    With `commit`, the transaction is committed in the same round trip: the caller's block then
    finds nothing left to commit (psycopg sends no COMMIT for a connection outside a
    transaction)."""
    driver = _driver(conn)
    compiled = [numbered(clause, params) for clause, params in statements]
    # The whole transaction, when these are its first statements and it ends with them: sent
    # without BEGIN and COMMIT, they run as one implicit transaction that the pipeline's Sync
    # commits (PostgreSQL's extended protocol: statements before a Sync are one transaction,
    # rolled back together when one fails). Each still takes its own snapshot (READ COMMITTED),
    # so a statement sees what committed while an earlier one waited for a lock. Two statements
    # less for the server to run: a single write 0.82 -> 0.72 ms (bench/RESULTS.md, "breakdown").
    implicit = commit and driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # the pipeline's errors surface when it ends (at its sync), inside _driver_errors
    with _driver_errors(conn, compiled[rows_of][0]), _autocommit(driver, implicit):
        cursors = [psycopg.RawCursor(driver) for _ in compiled]
        try:
            with driver.pipeline():
                for cursor, (sql, values) in zip(cursors, compiled, strict=True):
                    cursor.execute(sql, values)
                if commit and not implicit:
                    # a failed statement before it skips it: the transaction is then rolled back
                    driver.execute("COMMIT")
            # read once the pipeline has ended: its end (a Sync) brought every result back.
            # Read inside, psycopg asks the server for them first (a flush request): a second
            # round trip (0.1 ms of a one-row write's 0.8)
            return cursors[rows_of].fetchall()
        finally:
            for cursor in cursors:
                cursor.close()


@contextmanager
def _autocommit(driver: psycopg.Connection[Any], on: bool) -> Iterator[None]:
    """psycopg sends no BEGIN while in the block (when `on`); the connection is handed back to
    SQLAlchemy as it found it (idle: the implicit transaction ended with the pipeline)."""
    if not on:
        yield
        return
    driver.autocommit = True
    try:
        yield
    finally:
        # a connection that broke meanwhile is left as it is: the pool discards it
        if driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            driver.autocommit = False


# Statements are compiled with PostgreSQL's own placeholders ($1, $2 …) and run on psycopg's
# RawCursor, which sends them as they are. With psycopg's %(name)s placeholders every execute
# converts the query, and psycopg caches conversions only of queries up to 4,096 characters:
# the membership merge (about 7,000) was parsed anew on every single write, 45 us of it.
_NUMBERED = postgresql.psycopg.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]


def numbered(
    clause: TextClause, parameters: Mapping[str, Any] | None
) -> tuple[str, list[Any] | None]:
    """The clause's SQL with $n placeholders, and its parameters' values in their order (None:
    it has none), for a RawCursor."""
    sql, names = _compiled(clause)
    return sql, [(parameters or {})[name] for name in names] or None


@lru_cache(maxsize=64)
def _compiled(clause: TextClause) -> tuple[str, tuple[str, ...]]:
    compiled = clause.compile(dialect=_NUMBERED)
    return str(compiled), tuple(compiled.positiontup or ())


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


@contextmanager
def _driver_errors(conn: Connection, statement: str) -> Iterator[None]:
    """Raise the driver's errors as SQLAlchemy would (DataError, OperationalError …), with no
    parameters (they may hold customer data); a connection that died is invalidated, so the
    pool replaces it and the store reports an outage."""
    try:
        yield
    except psycopg.Error as exc:
        # psycopg's Error is the DB-API module's Error that SQLAlchemy's typing names abstractly
        driver_error = cast(Any, exc)
        dead = conn.dialect.is_disconnect(driver_error, conn.connection.dbapi_connection, None)
        if dead:
            conn.invalidate(exc)
        raise as_sqlalchemy_error(exc, statement, conn.dialect, dead=dead) from exc


def as_sqlalchemy_error(
    exc: psycopg.Error, statement: str, dialect: Dialect, *, dead: bool
) -> StatementError:
    """The driver's error as SQLAlchemy raises it (DataError, OperationalError …: the family
    app.store.engine.failure_reason reads), without parameters (they may hold customer data);
    `dead`: the connection died with it."""
    return DBAPIError.instance(
        statement, None, exc, psycopg.Error, dialect=dialect, connection_invalidated=dead
    )
