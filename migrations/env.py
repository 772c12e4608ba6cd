"""Alembic environment: the URL comes from the caller or the service settings, the schema from
app.store.tables."""

from __future__ import annotations

from alembic import context

from app.settings import Settings
from app.store.engine import make_engine
from app.store.tables import Base

config = context.config
target_metadata = Base.metadata


def _settings() -> Settings:
    # `segments migrate` passes the URL in (the embedded server's, or DATABASE_URL); a plain
    # `alembic` call reads DATABASE_URL from the environment
    settings = Settings()
    url = config.attributes.get("database_url")
    return settings.with_database(url) if url else settings


def run_migrations_offline() -> None:
    context.configure(url=_settings().database, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_settings())
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
