"""Creating the SQLAlchemy engine: fail fast when the database is away, recover when it is back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from app.settings import Settings


def make_engine(settings: Settings) -> Engine:
    url = make_url(settings.database_url_text)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": settings.db_connect_timeout}, hide_parameters=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    connect_args: dict[str, Any] = {
        "connect_timeout": settings.db_connect_timeout,
        # a statement that hangs (a lock, a dying server) must not hold a request forever
        "options": f"-c statement_timeout={settings.db_statement_timeout_ms}",
        # notice a silently vanished server within seconds instead of the kernel's minutes
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
    }
    return create_engine(
        url,
        connect_args=connect_args,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        # a connection the server dropped is replaced on checkout: recovery without a restart
        pool_pre_ping=True,
        # errors and logs must not carry customer ids or features
        hide_parameters=True,
    )


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (lookups, drift) run while a writer commits; FULL sync keeps "200" durable
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
