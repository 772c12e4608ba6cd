"""`segments serve` and `segments migrate`: the service under uvicorn, and its schema.

Without DATABASE_URL both run on the embedded PostgreSQL (app.store.embedded), which `serve`
migrates itself and stops when it ends. Every start-up problem (settings, keys, the erasure
key, the database, the port) is reported together, in a few lines, before any worker starts.
"""

from __future__ import annotations

import copy
import os
import resource
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from app import startup
from app.cli.common import (
    database,
    err,
    errors_as_messages,
    fail,
    load_settings,
    setting_problems,
)
from app.settings import ConfigurationError, Settings

if TYPE_CHECKING:
    from app.scoring.artifact import Artifact


def serve(
    model: Annotated[
        Path | None, typer.Option("--model", help="model folder (default: models/ and its DEFAULT)")
    ] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="worker processes sharing the port")
    ] = 1,
    migrate_first: Annotated[
        bool,
        typer.Option(
            "--migrate",
            help="apply the migrations before serving (always done on the embedded PostgreSQL, "
            "which no one else migrates; a deployment runs `segments migrate` as its own step)",
        ),
    ] = False,
) -> None:
    """Serve the HTTP API with uvicorn (on the embedded PostgreSQL unless DATABASE_URL is set)."""
    import uvicorn

    from app.api.connections import GuardedHttpToolsProtocol
    from app.store.migrate import upgrade

    if model is not None:
        os.environ["SEGMENTS_MODEL_DIR"] = str(model.resolve())
    configured, artifact = _settings_and_model(model)
    embedded = configured.database_url is None
    # serve reports the database with its other problems (and starts on one not answering yet)
    with errors_as_messages(), database(configured, announce=True, check=False) as settings:
        if embedded:
            settings = startup.quick_start(settings, host)
        _check_before_start(settings, host, port)
        if embedded or migrate_first:
            upgrade(settings.database.render_as_string(hide_password=False))
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
        _open_files_for(settings.max_connections_per_worker)
        if workers > 1:
            _fresh_multiprocess_dir()
        # uvicorn re-raises the signal it shut down on once it is done, and SIGTERM's default
        # action would end the process at once: as SystemExit, the embedded PostgreSQL stops
        # on the way out (and Ctrl-C ends quietly, without click's "Aborted!")
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, lambda number, _: sys.exit(128 + number))
        try:
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
                # header timeout and connection cap (app.api.connections); idle keep-alive
                http=GuardedHttpToolsProtocol,
                timeout_keep_alive=settings.http_keep_alive_seconds,
                # on SIGTERM: listeners closed, idle connections closed, in-flight requests
                # drained; what still runs after the grace (an export to a client that stopped
                # reading) is cancelled, so shutdown ends within the orchestrator's grace period
                timeout_graceful_shutdown=settings.shutdown_grace_seconds,
            )
        finally:
            # shut down already: another Ctrl-C must not cut the database's stop short
            for stop_signal in (signal.SIGTERM, signal.SIGINT):
                signal.signal(stop_signal, signal.SIG_IGN)


def migrate() -> None:
    """Apply the database migrations (DATABASE_URL, or the embedded PostgreSQL)."""
    from app.store.migrate import upgrade

    with errors_as_messages(), database(load_settings()) as settings:
        upgrade(settings.database.render_as_string(hide_password=False))
    err.print("[green]database schema is up to date[/green]")


def _settings_and_model(model: Path | None) -> tuple[Settings, Artifact]:
    """The settings and the model to serve, or every problem with either at once (exit 2)."""
    from app.scoring.artifact import ArtifactError, load_artifact
    from app.settings import DEFAULT_MODELS_DIR

    problems: list[str] = []
    try:
        settings: Settings | None = Settings()
    except ValidationError as exc:
        settings = None
        problems += setting_problems(exc)
    try:
        model_dir = settings.model_dir if settings is not None else model or DEFAULT_MODELS_DIR
        artifact = load_artifact(model_dir)  # refuse a bad model before any worker starts
    except ArtifactError as exc:
        problems.append(str(exc))
    if settings is None or problems:
        fail(problems)
    return settings, artifact


def _check_before_start(settings: Settings, host: str, port: int) -> None:
    """What the workers would refuse to start with, plus the database and the port, reported
    together (exit 2) before anything starts or switches the fleet's model."""
    problems = []
    try:
        startup.check_settings(settings)
    except ConfigurationError as exc:
        problems += exc.problems
    problem, answered = startup.database_problem(settings)
    if problem is not None:
        problems.append(problem)
    elif not answered:
        err.print(
            "[yellow]warning:[/yellow] the database does not answer yet; the service starts "
            "and serves once it does (see /readyz)"
        )
    if (busy := startup.port_problem(host, port)) is not None:
        problems.append(busy)
    if problems:
        fail(problems)


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


def _open_files_for(connections: int) -> None:
    """Raise this process's open-files limit (the workers inherit it) so that a worker can hold
    its connections and its own files: a shell's default 1,024 would fail accepts (EMFILE) long
    before the connection cap answers 503. Only up to the hard limit the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256  # the pool's connections, the metrics files, the logs
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))


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
