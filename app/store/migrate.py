"""Applying and checking the Alembic migrations from code (`segments migrate`, tests, start-up checks)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import cast

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, text

from app.settings import PROJECT_ROOT


def alembic_config(database_url: str, root: Path = PROJECT_ROOT) -> Config:
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.attributes["database_url"] = database_url
    return config


class OldMigrationChain(RuntimeError):
    """The database was migrated by the chain this one replaced."""


def upgrade(database_url: str) -> None:
    """Bring the database to the latest schema (idempotent)."""
    try:
        command.upgrade(alembic_config(database_url), "head")
    except CommandError as exc:
        if "Can't locate revision" not in str(exc):
            raise
        raise OldMigrationChain(
            "the database was migrated by an earlier version of the service, whose migrations "
            "were replaced by a new chain before it ran in production: point DATABASE_URL at a "
            "new database (or drop this one's tables) and run `segments migrate` again"
        ) from exc


def check(database_url: str) -> None:
    """Raise if the migrations do not produce exactly the schema app.store.tables declares."""
    command.check(alembic_config(database_url))


@functools.cache
def head_revision(root: Path = PROJECT_ROOT) -> str | None:
    """The newest migration this code ships: what a ready database must be at."""
    return ScriptDirectory.from_config(alembic_config("", root)).get_current_head()


def schema_revision(conn: Connection) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    if conn.execute(text("SELECT to_regclass('alembic_version')")).scalar() is None:
        return None  # never migrated
    return cast(str | None, conn.execute(text("SELECT version_num FROM alembic_version")).scalar())
