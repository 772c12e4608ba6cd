"""What the service refuses to start with, in one place: the checks `create_app` runs (so a
worker never serves with them), the ones `segments serve` adds before any worker starts (the
database, the port), and the quick start's defaults on the embedded PostgreSQL.

Each check lists its problems with their fixes rather than raising at the first, so the
operator sees everything wrong at once.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from pydantic import SecretStr
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from app.auth.guard import Guard
from app.auth.keys import parse_key_config
from app.settings import ConfigurationError, Settings
from app.store.embedded import embedded_erasure_key
from app.store.engine import make_engine, ping


def check_settings(settings: Settings) -> Guard:
    """Raise ConfigurationError naming every problem: no database, a bad or unreadable key
    entry, no keys without SEGMENTS_ALLOW_ANONYMOUS, no erasure key. Returns the key guard."""
    problems = []
    if settings.database_url is None:
        problems.append(
            "DATABASE_URL is not set: `segments serve` starts the embedded PostgreSQL itself, "
            "but a server started otherwise (plain uvicorn) needs DATABASE_URL"
        )
    guard = Guard.open_to_all()
    try:
        guard = Guard(parse_key_config(settings.api_key_config()))
    except (ValueError, OSError) as exc:
        problems.append(f"API keys: {exc}")
    else:
        if guard.open and not settings.allow_anonymous:
            problems.append(
                "no API keys are configured: set SEGMENTS_API_KEYS (or SEGMENTS_API_KEYS_FILE) "
                "to entries made by `segments keys create`, or SEGMENTS_ALLOW_ANONYMOUS=true to "
                "serve without them"
            )
    if not settings.erasure_key.get_secret_value():
        problems.append(
            "SEGMENTS_ERASURE_KEY is not set: erasure tombstones are keyed hashes of customer "
            "ids, and the service needs its own secret key for them (any long random string, "
            "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`, kept in a "
            "Secret and never changed: a new key forgets every tombstone)"
        )
    if problems:
        raise ConfigurationError(problems)
    return guard


def quick_start(settings: Settings, host: str) -> Settings:
    """The embedded quick start's defaults: its own erasure key (kept beside its data) unless
    one is set; and, listening on this machine alone, no API keys needed unless keys are
    configured or SEGMENTS_ALLOW_ANONYMOUS says otherwise (the service says loudly that it is
    open). Listening beyond loopback, it needs keys like any deployment."""
    updates: dict[str, object] = {}
    if not settings.erasure_key.get_secret_value():
        updates["erasure_key"] = SecretStr(embedded_erasure_key(settings.embedded_dir))
    try:
        keys = settings.api_key_config().strip()
    except OSError:
        keys = "unreadable"  # check_settings names the file
    if not keys and "allow_anonymous" not in settings.model_fields_set and _loopback(host):
        updates["allow_anonymous"] = True
    return settings.model_copy(update=updates)


def _loopback(host: str) -> bool:
    try:
        return all(
            ipaddress.ip_address(address[4][0]).is_loopback
            for address in socket.getaddrinfo(host, None)
        )
    except (OSError, ValueError):
        return False


# what the server says when the configuration is at fault, not a passing outage (libpq gives
# connection failures no SQLSTATE, only the server's message)
_REFUSALS = ("does not exist", "password authentication failed", "no pg_hba.conf entry")


def database_problem(settings: Settings) -> tuple[str | None, bool]:
    """(the problem, whether the server answered). A database the service can never use
    (unknown, wrong credentials) is a start-up problem; one that does not answer yet is not:
    the service starts, says so in /readyz, and serves once it answers."""
    engine = make_engine(settings.model_copy(update={"db_pool_size": 1}))
    try:
        with engine.connect() as conn:
            ping(conn)
    except OperationalError as exc:
        if any(phrase in str(exc.orig) for phrase in _REFUSALS):
            return connection_problem(exc, settings.database), True
        return None, False
    finally:
        engine.dispose()
    return None, True


def connection_problem(failure: OperationalError, url: URL) -> str:
    """One line saying why the database at `url` cannot be used, and what to do about it. From
    the server's own words, which name the database or user but never the password."""
    said = str(failure.orig or failure).strip()
    words = said.rsplit("FATAL:", 1)[-1].strip().splitlines()[0]
    where = (
        f"{url.host or 'localhost'}:{url.port or 5432}" if url.host or url.port else "the socket"
    )
    flags = [
        f"{flag} {value}"
        for flag, value in (("-h", url.host), ("-p", url.port), ("-U", url.username))
        if value
    ]
    if (missing := re.search(r'database "([^"]+)" does not exist', said)) is not None:
        name = missing.group(1)
        createdb = " ".join(["createdb", *flags, name])
        return (
            f'DATABASE_URL names a database that does not exist: database "{name}" does not '
            f"exist on {where}; create it (`{createdb}`) or point DATABASE_URL at one that does"
        )
    if (role := re.search(r'role "([^"]+)" does not exist', said)) is not None:
        return (
            f'DATABASE_URL names a user that does not exist: role "{role.group(1)}" does not '
            f"exist on {where}; create it or put another user in DATABASE_URL"
        )
    if "password authentication failed" in said:
        return f"the server at {where} refused the user or password of DATABASE_URL: {words}"
    if "no pg_hba.conf entry" in said:
        return (
            f"the server at {where} does not let this user connect from here (pg_hba.conf): {words}"
        )
    if "Connection refused" in said or "No such file or directory" in said:
        return (
            f"no PostgreSQL answers at {where} (connection refused): start it, or fix the host "
            "and port of DATABASE_URL (or unset DATABASE_URL to use the embedded PostgreSQL)"
        )
    if "failed to resolve host" in said or "could not translate host name" in said:
        return f"the host of DATABASE_URL, {url.host!r}, is not known here: fix DATABASE_URL"
    if "timeout" in said.lower():
        return (
            f"no answer from {where} in time: is PostgreSQL running there, and reachable from "
            "here? (SEGMENTS_DB_CONNECT_TIMEOUT sets how long to wait)"
        )
    return f"the database at {where} cannot be used: {words}"


def port_problem(host: str, port: int) -> str | None:
    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None
