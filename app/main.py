"""The application factory: the one place that wires settings, model, store and metrics together."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from app.api import audiences, erasure, lifecycle, routes
from app.api.limits import BodySizeLimit
from app.api.responses import OrjsonResponse
from app.audience.erasure import QUICKSTART_KEY, IdHasher
from app.audience.retention import NoticePruner
from app.auth.guard import Guard, scope_alternatives
from app.auth.keys import parse_key_config
from app.errors import AppError, install_error_handlers
from app.lifecycle.registry import ModelRegistry
from app.lifecycle.shadow import ShadowScorer
from app.lifecycle.watcher import ModelWatcher
from app.metrics.history import parse_span
from app.metrics.live import LiveCollector
from app.metrics.middleware import RequestTimer
from app.metrics.registry import ASSIGNMENTS, STORE_FAILURES
from app.runtime import Runtime
from app.scoring.artifact import ArtifactError
from app.scoring.model import SegmentModel
from app.service import AssignmentService
from app.settings import Settings
from app.store.engine import make_engine
from app.store.group_commit import GroupCommitter
from app.store.migrate import head_revision

log = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; the model is loaded and verified when the lifespan starts."""
    settings = settings or Settings()
    guard = check_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Runtime]]:
        # an invalid artifact raises here: start-up fails and the pod never becomes ready
        configured = SegmentModel.load(settings.model_dir)
        engine = make_engine(settings)
        registry = ModelRegistry(engine)
        model = _bootstrap(registry, configured, settings.model_activate_on_start)
        service = AssignmentService(
            model,
            engine,
            settings.max_batch,
            id_hash=IdHasher(_erasure_key(settings)),
            phone_region=settings.phone_default_region,
            erasure_notice_days=settings.erasure_notice_days,
        )
        service.segment_names = _known_segment_names(registry) | service.segment_names
        shadow = ShadowScorer(settings.shadow_flush_ms / 1000)
        service.shadow = shadow
        watcher = ModelWatcher(registry, service, shadow, poll_seconds=settings.model_poll_seconds)
        service.schema_head = head_revision()
        committer = GroupCommitter(
            service.write, settings.group_commit_max_rows, settings.group_commit_wait_ms / 1000
        )
        service.committer = committer
        committer.start()
        await watcher.check()  # a shadow set before this start is picked up at once
        shadow.start()
        watcher.start()
        pruner = NoticePruner(engine, settings.erasure_notice_days, settings.erasure_prune_seconds)
        pruner.start()
        live = CollectorRegistry()
        live.register(
            LiveCollector(
                lambda: service.model,
                lambda: shadow.model,
                engine,
                settings.drift_window,
                settings.drift_cache_seconds,
                settings.drift_min_samples,
                [
                    (w.strip(), parse_span(w))
                    for w in settings.drift_time_windows.split(",")
                    if w.strip()
                ],
                settings.drift_max_rows,
            )
        )
        if guard.open:
            log.warning(
                "NO API KEYS: every endpoint is open to anyone who can reach this port. "
                "Configure SEGMENTS_API_KEYS (segments keys create) before exposing it."
            )
        else:
            log.info("API keys configured: %s", ", ".join(guard.keys.names))
        log.info(
            "serving model %s (%d segments) with the %s",
            model.version,
            len(model.manifest.segments),
            model.scorer_note,
        )
        # every series exists from the start, at zero, so rate() and alerts see the first event
        for segment in model.manifest.segments:
            ASSIGNMENTS.labels(model.version, segment.key)
        for operation in ("assign", "assign_batch", "lookup", "export", "erase", "models"):
            STORE_FAILURES.labels(operation)
        if settings.gc_freeze:
            # everything loaded so far lives as long as the process: move it out of the
            # collector's sight, so collections during requests only walk request garbage
            gc.collect()
            gc.freeze()
        try:
            yield {"runtime": Runtime(settings, engine, service, live, registry, watcher, guard)}
        finally:
            await watcher.close()
            await shadow.close()
            await committer.close()  # first the queued assignments
            await pruner.close()
            engine.dispose()

    app = FastAPI(
        title="Segment scoring service",
        version="1",
        summary="Assigns customers to marketing segments in real time and stores every assignment.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    for module in (routes, audiences, erasure, lifecycle):
        app.include_router(module.router)
    app.include_router(routes.operations)
    generate_openapi = app.openapi  # FastAPI's, which caches the document it builds

    def openapi() -> dict[str, Any]:
        return scope_alternatives(generate_openapi())

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it
    install_error_handlers(app, settings.max_body_bytes)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestTimer)
    return app


def _bootstrap(registry: ModelRegistry, configured: SegmentModel, activate: bool) -> SegmentModel:
    """The model to serve: the registry's active one (registering the configured model first).

    Without a reachable, migrated store the configured model serves, and the watcher converges
    on the registry once the store answers.
    """
    try:
        return registry.bootstrap(configured, activate=activate)
    except SQLAlchemyError as exc:
        log.warning("model registry unavailable, serving %s: %s", configured.version, exc)
    except (ArtifactError, AppError) as exc:
        log.error(
            "the registry's active model cannot be loaded, serving %s: %s", configured.version, exc
        )
    return configured


def _known_segment_names(registry: ModelRegistry) -> dict[str, str]:
    """Segment names of every registered version, oldest first, so newer names win."""
    try:
        versions = registry.listed()
    except SQLAlchemyError:
        return {}
    names: dict[str, str] = {}
    for version in reversed(versions):
        for segment in version.manifest.get("segments", []):
            names[segment["key"]] = segment["name"]
    return names


def check_settings(settings: Settings) -> Guard:
    """What refuses to start before anything starts (RuntimeError or ValueError, with the
    fix in the message): a bad key entry, no keys on a real database without
    SEGMENTS_ALLOW_ANONYMOUS, no erasure key on a real database. Returns the key guard."""
    guard = Guard(parse_key_config(settings.api_key_config()))
    if guard.open:
        _check_anonymous_allowed(settings)
    _erasure_key(settings)
    return guard


def _erasure_key(settings: Settings) -> str:
    """The key tombstones are hashed with: configured, or the quickstart's on embedded SQLite."""
    key = settings.erasure_key.get_secret_value()
    if key:
        return key
    if settings.database_url_text.startswith("sqlite"):
        return QUICKSTART_KEY
    raise RuntimeError(
        "SEGMENTS_ERASURE_KEY is not set: erasure tombstones are keyed hashes of customer ids, "
        "and a service on a real database needs its own secret key for them (any long random "
        "string, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`, kept in a "
        "Secret and never changed: a new key forgets every tombstone)"
    )


def _check_anonymous_allowed(settings: Settings) -> None:
    """Only the embedded-SQLite quickstart runs without keys unless the operator says so."""
    if settings.database_url_text.startswith("sqlite") or settings.allow_anonymous:
        return
    raise RuntimeError(
        "no API keys are configured for a service on a real database: set SEGMENTS_API_KEYS "
        "(or SEGMENTS_API_KEYS_FILE) to entries made by `segments keys create`, or "
        "SEGMENTS_ALLOW_ANONYMOUS=true to serve without them"
    )
