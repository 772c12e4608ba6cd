"""Alembic environment: the URL comes from the service settings, the schema from app.store.tables."""

from __future__ import annotations

from alembic import context

from app.settings import Settings
from app.store.engine import make_engine
from app.store.tables import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # `segments migrate` passes the URL in; a plain `alembic` call reads the service settings
    return config.attributes.get("database_url") or Settings().database_url_text


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(Settings(database_url=_url()))  # type: ignore[arg-type]
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection, target_metadata=target_metadata, render_as_batch=True
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
