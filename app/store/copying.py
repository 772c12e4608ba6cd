"""COPY … FROM STDIN through the connection SQLAlchemy holds: the bulk path for history rows and
ingested events. Callers build the payload in COPY's text format (one line a row, tabs between
values, `\\N` for NULL), escaping text with `copy_text`."""

from __future__ import annotations

import psycopg
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

NULL = "\\N"


def copy_in(conn: Connection, statement: str, payload: str) -> None:
    """Run a `COPY … FROM STDIN` with `payload` in the caller's transaction."""
    driver = conn.connection.driver_connection
    assert driver is not None
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            copy.write(payload)
    except psycopg.Error as exc:
        # COPY bypasses SQLAlchemy's statement execution: wrap the driver's error the way
        # SQLAlchemy would (DataError, OperationalError …) so callers handle one family
        raise DBAPIError.instance(
            statement, None, exc, psycopg.Error, dialect=conn.dialect
        ) from exc


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
