"""`segments serve` and `segments migrate`: the service under uvicorn, and its schema.

Without DATABASE_URL both run on the embedded PostgreSQL (app.store.embedded), which `serve`
migrates itself and stops when it ends. Every start-up problem (settings, keys, the erasure
key, the database, the port) is reported together, in a few lines, before any worker starts.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import SecretStr
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from app.cli.common import database, err, errors_as_messages, fail, load_settings
from app.settings import ConfigurationError, Settings

if TYPE_CHECKING:
    from app.scoring.artifact import Artifact

log = logging.getLogger(__name__)


def serve(
    model: Annotated[
        Path | None, typer.Option("--model", help="model folder (default: models/ and its DEFAULT)")
    ] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="worker processes sharing the port")
    ] = 1,
) -> None:
    """Serve the HTTP API with uvicorn (on the embedded PostgreSQL unless DATABASE_URL is set)."""
    import uvicorn

    from app.scoring.artifact import load_artifact

    if model is not None:
        os.environ["SEGMENTS_MODEL_DIR"] = str(model.resolve())
    configured = load_settings()
    with errors_as_messages():
        artifact = load_artifact(configured.model_dir)  # refuse a bad model before workers start
    embedded = configured.database_url is None
    with errors_as_messages(), database(configured, announce=True) as settings:
        if embedded:
            settings = _quick_start(settings)
            from app.store.migrate import upgrade

            upgrade(settings.database.render_as_string(hide_password=False))
        _check_before_start(settings, host, port)
        # the workers (other processes, or this one re-reading the environment) see what the
        # checks passed: the database the embedded server gives, and the quick start's defaults
        os.environ["DATABASE_URL"] = settings.database.render_as_string(hide_password=False)
        if embedded:
            os.environ["SEGMENTS_ERASURE_KEY"] = settings.erasure_key.get_secret_value()
            os.environ["SEGMENTS_ALLOW_ANONYMOUS"] = str(settings.allow_anonymous).lower()
        if model is not None or settings.model_activate_on_start:
            # An explicit --model is the operator's choice: activate it once, here. Were each
            # worker to do it at its start, a worker that uvicorn restarts later would undo
            # every activation made since (`segments models activate`, POST …/activate).
            _activate_at_launch(settings, artifact)
            os.environ["SEGMENTS_MODEL_ACTIVATE_ON_START"] = "false"
        if workers > 1:
            _fresh_multiprocess_dir()
        # uvicorn re-raises the signal it shut down on once it is done, and SIGTERM's default
        # action would end the process at once: as SystemExit, the embedded PostgreSQL stops
        # on the way out (and Ctrl-C ends quietly, without click's "Aborted!")
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda number, _: sys.exit(128 + number))
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level,
            log_config=_log_config(settings.log_level),
            access_log=False,
            proxy_headers=False,
            # a worker that does not answer the supervisor's ping in time is killed and
            # restarted; uvicorn's 5 s kills workers still importing on a throttled CPU
            timeout_worker_healthcheck=settings.worker_healthcheck_seconds,
        )


def migrate() -> None:
    """Apply the database migrations (DATABASE_URL, or the embedded PostgreSQL)."""
    from app.store.migrate import upgrade

    with errors_as_messages(), database(load_settings()) as settings:
        upgrade(settings.database.render_as_string(hide_password=False))
    err.print("[green]database schema is up to date[/green]")


def _quick_start(settings: Settings) -> Settings:
    """The embedded quick start's defaults: its own erasure key (kept beside its data) unless
    one is set, and no API keys needed (the server listens on 127.0.0.1 by default, and the
    service says loudly that it is open)."""
    from app.store.embedded import embedded_erasure_key

    updates: dict[str, Any] = {}
    if not settings.erasure_key.get_secret_value():
        updates["erasure_key"] = SecretStr(embedded_erasure_key(settings.embedded_dir))
    if not settings.api_key_config().strip():
        updates["allow_anonymous"] = True
    return settings.model_copy(update=updates)


def _check_before_start(settings: Settings, host: str, port: int) -> None:
    """What the workers would refuse to start with, plus the database and the port, reported
    together (exit 2) before anything starts or switches the fleet's model."""
    from app.main import check_settings

    problems = []
    try:
        check_settings(settings)
    except ConfigurationError as exc:
        problems += exc.problems
    problems += _database_problems(settings)
    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        problems.append(f"cannot listen on {host}:{port}: {exc.strerror}")
    if problems:
        fail(problems)


# what the server says when the configuration is at fault, not a passing outage (libpq gives
# connection failures no SQLSTATE, only the server's message)
_REFUSALS = {
    "does not exist": "DATABASE_URL names a database or user that does not exist on that server",
    "password authentication failed": "the server refused the user or password of DATABASE_URL",
    "no pg_hba.conf entry": "the server does not let this user connect from here (pg_hba.conf)",
}


def _database_problems(settings: Settings) -> list[str]:
    """A database the service can never use (unknown, wrong credentials) is a start-up
    problem; one that does not answer yet is not: the service starts, says so in /readyz, and
    serves once it answers."""
    from app.store.engine import make_engine, ping

    engine = make_engine(settings.model_copy(update={"db_pool_size": 1}))
    try:
        with engine.connect() as conn:
            ping(conn)
    except OperationalError as exc:
        said = str(exc.orig)
        for phrase, problem in _REFUSALS.items():
            if phrase in said:
                # the server's own words name the database or user, never the password
                detail = said.rsplit("FATAL:", 1)[-1].strip().splitlines()[0]
                return [f"{problem}: {detail}"]
        err.print(
            "[yellow]warning:[/yellow] the database does not answer yet; the service starts "
            "and serves once it does (see /readyz)"
        )
    finally:
        engine.dispose()
    return []


def _activate_at_launch(settings: Settings, artifact: Artifact) -> None:
    """Register and activate the launch model in the registry, once for the whole server."""
    from app.errors import AppError
    from app.lifecycle.registry import ModelRegistry
    from app.scoring.model import SegmentModel
    from app.store.engine import make_engine

    engine = make_engine(settings)
    try:
        ModelRegistry(engine).bootstrap(SegmentModel(artifact), activate=True)
    except AppError as exc:  # e.g. this version is registered with another artifact
        fail([f"{artifact.manifest.version} cannot be activated: {exc}"])
    except SQLAlchemyError as exc:
        err.print(
            f"[yellow]warning:[/yellow] could not activate {artifact.manifest.version} in the "
            f"model registry ({type(exc).__name__}); it serves until the store answers, then "
            "the registry's active version does. Run `segments models activate "
            f"{artifact.manifest.version}` once the store is up."
        )
    finally:
        engine.dispose()


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with the service's own `app.*` loggers on the same handler, so
    model switches, load failures and the start-up summary reach the operator."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["app"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def _fresh_multiprocess_dir() -> None:
    """Counters summed over workers: prometheus_client's multiprocess mode, set before workers start."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="segments-metrics-")
        return
    # the client's docs: empty the folder between runs, or old workers' counts leak in. Empty
    # it rather than remove it: in Kubernetes it is a mounted emptyDir that cannot be removed.
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for entry in path.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
