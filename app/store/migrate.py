"""Applying and checking the Alembic migrations from code (`segments migrate`, tests, start-up checks)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from app.settings import PROJECT_ROOT


def alembic_config(database_url: str, root: Path = PROJECT_ROOT) -> Config:
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str) -> None:
    """Bring the database to the latest schema (idempotent)."""
    command.upgrade(alembic_config(database_url), "head")


def check(database_url: str) -> None:
    """Raise if the migrations do not produce exactly the schema app.store.tables declares."""
    command.check(alembic_config(database_url))


def head_revision(root: Path = PROJECT_ROOT) -> str | None:
    """The newest migration this code ships: what a ready database must be at."""
    return ScriptDirectory.from_config(alembic_config("", root)).get_current_head()
