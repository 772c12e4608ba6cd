"""The event loop's own connection: the single assignments' writes (the group committer's, a
few rows at a time) sent by the event loop itself on a psycopg AsyncConnection, instead of on a
pooled connection in a thread. The hop to a thread and back cost a one-row write about 0.3 ms
of its 1.1 (bench/RESULTS.md, "loop connection"): two wake-ups across threads, and the GIL
handed back and forth with the event loop.

One write at a time (the group committer awaits each), so one connection. It is opened by the
first write, checked before each (app.store.engine.dropped: no round trip) and opened anew when
the server dropped it, as the pool does with its own; a write that fails with it fails as the
pool's would (SQLAlchemy's errors, so app.service.store reports the same outage).

Each write is its statements in one pipeline without BEGIN and COMMIT: one implicit
transaction that the pipeline's Sync commits (app.store.driver.pipelined says why that holds).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import Engine

from app.settings import Settings
from app.store.driver import Statement, as_sqlalchemy_error, numbered
from app.store.engine import connection_options, dropped


class LoopConnection:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        # the engine's URL as psycopg's keywords (host, port, dbname, user …), and the options
        # every connection of the service has (timeouts, keepalives)
        _, from_url = engine.dialect.create_connect_args(engine.url)
        self._arguments = {**from_url, **connection_options(settings)}
        self._dialect = engine.dialect
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._used_at: float | None = None  # time.monotonic() at the last write's end

    async def write(
        self, statements: Sequence[Statement], *, rows_of: int = -1
    ) -> list[tuple[Any, ...]]:
        """Run the statements as one transaction, committed when this returns; the rows of the
        last one (or of the one at `rows_of`). The first that fails raises (as SQLAlchemy
        would) and nothing of them is kept."""
        compiled = [numbered(clause, parameters) for clause, parameters in statements]
        try:
            conn = await self._connection()
            cursors = [psycopg.AsyncRawCursor(conn) for _ in compiled]
            try:
                async with conn.pipeline():
                    for cursor, (sql, values) in zip(cursors, compiled, strict=True):
                        await cursor.execute(sql, values)
                # read after the pipeline's end, as app.store.driver.pipelined does: one round trip
                return await cursors[rows_of].fetchall()
            finally:
                for cursor in cursors:
                    await cursor.close()
        except psycopg.Error as exc:
            dead = self._conn is None or self._conn.broken or self._conn.closed
            if dead:
                await self.close()
            raise as_sqlalchemy_error(exc, compiled[rows_of][0], self._dialect, dead=dead) from exc
        finally:
            self._used_at = time.monotonic()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and dropped(self._conn.pgconn, self._used_at):
            await self.close()
        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(**self._arguments, autocommit=True)
        return self._conn
