"""The migrations produce exactly the schema the code declares."""

from __future__ import annotations

from app.store.migrate import check, upgrade


def test_migrations_match_the_models(database_url: str) -> None:
    upgrade(database_url)  # idempotent on an up-to-date database
    check(database_url)  # raises if autogenerate would find any difference
