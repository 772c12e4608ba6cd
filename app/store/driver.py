"""Statements sent through the driver connection SQLAlchemy holds, in the caller's transaction,
where SQLAlchemy's own execution costs round trips the hot paths cannot afford:

- `copy_in`: COPY … FROM STDIN, the bulk path for history rows and ingested events. Callers
  build the payload in COPY's text format (one line a row, tabs between values, `\\N` for NULL),
  escaping text with `copy_text`.
- `pipelined`: several statements in one round trip (psycopg's pipeline mode). SQLAlchemy reads
  each statement's result as soon as it is sent, which a pipeline cannot give, so the statements
  (SQLAlchemy `text()` clauses with bound parameters) are compiled by the dialect and run on the
  driver's cursors.

Driver errors are raised as SQLAlchemy raises them (DBAPIError's family, the connection
invalidated when it died), so callers handle one family whichever way a statement went.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, cast

import psycopg
from sqlalchemy import Connection, TextClause
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError

NULL = "\\N"


def copy_in(conn: Connection, statement: str, payload: str) -> None:
    """Run a `COPY … FROM STDIN` with `payload` in the caller's transaction."""
    with (
        _driver_errors(conn, statement),
        _driver(conn).cursor() as cursor,
        cursor.copy(statement) as copy,
    ):
        copy.write(payload)


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
    statements: Sequence[tuple[TextClause, Mapping[str, Any] | None]],
    *,
    commit: bool = False,
    rows_of: int = -1,
) -> list[tuple[Any, ...]]:
    """Run the statements in order in one round trip (the transaction's BEGIN too, when they are
    its first); returns the rows of the last one (or of the one at index `rows_of`). The first
    that fails raises, and the transaction is then aborted: the caller's block rolls it back.
    With `commit`, the transaction's COMMIT goes in the same round trip: the caller's block then
    finds nothing left to commit (psycopg sends no COMMIT for a connection outside a
    transaction)."""
    driver = _driver(conn)
    compiled = [(_compiled(clause, conn.dialect), params) for clause, params in statements]
    # the pipeline's errors surface when it ends (at its sync), inside _driver_errors
    with _driver_errors(conn, str(compiled[rows_of][0][0])), driver.pipeline():
        cursors = [driver.cursor() for _ in compiled]
        try:
            for cursor, ((sql, names), params) in zip(cursors, compiled, strict=True):
                cursor.execute(sql, {name: (params or {})[name] for name in names})
            if commit:
                # a failed statement before it skips it: the transaction is then rolled back
                driver.execute("COMMIT")
            return cursors[rows_of].fetchall()
        finally:
            for cursor in cursors:
                cursor.close()


@lru_cache(maxsize=64)
def _compiled(clause: TextClause, dialect: Dialect) -> tuple[str, tuple[str, ...]]:
    """The clause as the driver's SQL (pyformat placeholders) and its parameter names."""
    compiled = clause.compile(dialect=dialect)
    return str(compiled), tuple(compiled.binds)


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
        raise DBAPIError.instance(
            statement, None, exc, psycopg.Error, dialect=conn.dialect, connection_invalidated=dead
        ) from exc
