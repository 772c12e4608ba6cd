"""The application factory: the one place that wires settings, models, store and metrics together."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.api import assignments, audiences, docs, erasure, events, lifecycle, operations
from app.api.direct import DirectRoutes
from app.api.errors import install_error_handlers
from app.api.limits import AddressLimit, BodySizeLimit
from app.api.openapi import complete
from app.api.responses import OrjsonResponse
from app.audience.erasure import IdHasher
from app.auth.guard import Guard, scope_alternatives
from app.clock import Clock, SystemClock
from app.errors import AppError, StoreReason
from app.lifecycle.holder import ModelHolder
from app.lifecycle.registry import ModelRegistry
from app.lifecycle.shadow import ShadowScorer
from app.lifecycle.watcher import ModelWatcher
from app.metrics.history import parse_span
from app.metrics.live import LiveCollector
from app.metrics.middleware import RequestRecorder
from app.metrics.registry import (
    ASSIGNMENTS,
    AUTH_FAILURES,
    EVENTS,
    GROUP_COMMIT_ROWS,
    RATE_LIMITED,
    REFRESHED,
    STORE_FAILURES,
)
from app.metrics.scored import publish_baseline
from app.runtime import Runtime
from app.scoring.artifact import ArtifactError
from app.scoring.model import SegmentModel
from app.service.assignments import AssignmentService, AssignmentWriter
from app.service.audiences import AudienceService
from app.service.erasure import ErasureService, NoticePruner
from app.service.events import EventBatch, EventResult, EventService, EventWriter
from app.service.idempotency import KEY_PRUNE_SECONDS, PendingRow, forget_expired_keys
from app.service.periodic import Periodic
from app.service.refresher import Refresher
from app.service.store import OPERATIONS, Store
from app.settings import Settings
from app.startup import check_settings
from app.store.engine import make_engine
from app.store.group_commit import GroupCommitter, in_thread
from app.store.loop_connection import LoopConnection
from app.store.tables import Cause

log = logging.getLogger("app")


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    """Build the service; the model is loaded and verified when the lifespan starts.
    Settings it cannot run with raise ConfigurationError, naming every problem
    (app.startup.check_settings). `clock` is what it reads "now" from (tests set one)."""
    settings = settings or Settings()
    clock = clock or SystemClock()
    guard = check_settings(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Runtime]]:
        # an invalid artifact raises here: start-up fails and the pod never becomes ready
        configured = SegmentModel.load(settings.model_dir)
        engine = make_engine(settings)
        # Closed in reverse order, each even if one before it failed: the background tasks
        # first, then the group committer writes what is queued, then the engine goes.
        async with AsyncExitStack() as running:
            running.callback(engine.dispose)
            store = Store(engine)
            registry = ModelRegistry(engine, clock, comparisons=settings.comparisons_per_worker)
            models = ModelHolder(
                _bootstrap(registry, configured, settings.model_activate_on_start),
                known_segment_names=_known_segment_names(registry),
            )
            id_hash = IdHasher(settings.erasure_key.get_secret_value())
            loop_connection = LoopConnection(engine, settings)
            running.push_async_callback(loop_connection.close)
            writer = AssignmentWriter(store, id_hash, loop_connection)
            committer: GroupCommitter[PendingRow, str | AppError | None] = GroupCommitter(
                writer.write_rows,
                settings.group_commit_max_rows,
                settings.group_commit_wait_ms / 1000,
                on_commit=GROUP_COMMIT_ROWS.observe,
            )
            committer.start()
            running.push_async_callback(committer.close)
            shadow = ShadowScorer(models, settings.shadow_flush_ms / 1000)
            event_writer = EventWriter(models, store, writer, shadow, clock)
            event_committer: GroupCommitter[EventBatch, EventResult] = GroupCommitter(
                in_thread(event_writer.write),
                settings.group_commit_max_rows,
                settings.group_commit_wait_ms / 1000,
            )
            event_committer.start()
            running.push_async_callback(event_committer.close)
            watcher = ModelWatcher(registry, models, poll_seconds=settings.model_poll_seconds)
            await watcher.check()  # a shadow set before this start is picked up at once
            shadow.start()
            running.push_async_callback(shadow.close)
            watcher.start()
            running.push_async_callback(watcher.close)
            pruner = NoticePruner(
                store, settings.erasure_notice_days, settings.erasure_prune_seconds, clock
            )
            pruner.start()
            running.push_async_callback(pruner.close)
            key_pruner = Periodic(
                "key-pruner",
                partial(forget_expired_keys, store, settings.idempotency_hours, clock),
                KEY_PRUNE_SECONDS,
                "deleting expired idempotency keys",
            )
            key_pruner.start()
            running.push_async_callback(key_pruner.close)
            refresher = Refresher(
                models,
                store,
                writer,
                shadow,
                clock,
                every_seconds=settings.refresh_seconds,
                chunk=settings.refresh_chunk,
            )
            refresher.start()
            running.push_async_callback(refresher.close)
            runtime = Runtime(
                settings=settings,
                models=models,
                assignments=AssignmentService(
                    models,
                    store,
                    writer,
                    committer,
                    shadow,
                    clock=clock,
                    max_batch=settings.max_batch,
                    phone_region=settings.phone_default_region,
                ),
                audiences=AudienceService(models, store, max_exports=settings.max_exports),
                erasure=ErasureService(
                    store, id_hash, notice_days=settings.erasure_notice_days, clock=clock
                ),
                events=EventService(
                    models,
                    event_writer,
                    event_committer,
                    clock,
                    max_batch=settings.max_batch,
                    phone_region=settings.phone_default_region,
                ),
                refresher=refresher,
                registry=registry,
                watcher=watcher,
                store=store,
                live_registry=_live_metrics(settings, models, engine, clock),
                clock=clock,
                guard=guard,
            )
            _announce(guard, models.model)
            if settings.gc_freeze:
                # everything loaded so far lives as long as the process: move it out of the
                # collector's sight, so collections during requests only walk request garbage
                gc.collect()
                gc.freeze()
            yield {"runtime": runtime}

    app = FastAPI(
        title="Segment scoring service",
        version="1",
        summary="Assigns customers to marketing segments in real time and stores every assignment.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        # /openapi.json and the docs pages are app.api.docs's: the document names the served
        # model's features, which only a request (through the lifespan's runtime) can see
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # operation ids are the route functions' names: what a generated client calls them
        generate_unique_id_function=lambda route: route.name,
        # the service's telemetry is Prometheus' (the contract's metrics): FastAPI's native
        # OpenTelemetry asks the global providers on every request whether to trace it, 2% of
        # a scored assignment's time spent learning that no one configured them
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    for module in (assignments, events, audiences, erasure, lifecycle, operations, docs):
        app.include_router(module.router)
    generate_openapi = app.openapi  # FastAPI's, which caches the document it builds

    completed: list[dict[str, Any]] = []  # built once, on first use

    def openapi() -> dict[str, Any]:
        # without a model: `Features` is generic (app.api.docs serves the served model's)
        if not completed:
            completed.append(scope_alternatives(complete(generate_openapi())))
        return completed[0]

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it
    install_error_handlers(app, settings.max_body_bytes)
    # innermost: past the limits and the recorder, the hot routes skip FastAPI's routing
    app.add_middleware(
        DirectRoutes,
        routes=app.routes,
        endpoints=(assignments.assign, assignments.assign_batch, events.ingest_events),
        exception_handlers=app.exception_handlers,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if guard.limits.per_address is not None:
        app.add_middleware(AddressLimit, buckets=guard.limits.per_address)
    # outermost: every answer, the limits' 429s too, gets its id, its timing and its log line
    app.add_middleware(RequestRecorder)
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


def _known_segment_names(registry: ModelRegistry) -> dict[str, dict[str, str]]:
    try:
        return registry.known_segment_names()
    except SQLAlchemyError:
        return {}


def _live_metrics(
    settings: Settings, models: ModelHolder, engine: Engine, clock: Clock
) -> CollectorRegistry:
    """The gauges computed at scrape time: model info and drift over the shared store."""
    live = CollectorRegistry()
    live.register(
        LiveCollector(
            lambda: models.model,
            lambda: models.shadow,
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
            clock,
        )
    )
    return live


def _announce(guard: Guard, model: SegmentModel) -> None:
    """Say what serves, and create every series at zero so rate() and alerts see the first event."""
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
    for segment in model.manifest.segments:
        ASSIGNMENTS.labels(model.version, segment.key)
    publish_baseline(model)
    for operation in OPERATIONS:
        for reason in StoreReason:
            STORE_FAILURES.labels(operation, reason.value)
    for outcome in ("stored", "duplicate", "suppressed"):
        EVENTS.labels(outcome)
    for cause in (Cause.TIME, Cause.MODEL, Cause.ASSIGNMENT):
        REFRESHED.labels(cause.value)
    for refusal in ("missing", "unknown", "scope", "purpose"):
        AUTH_FAILURES.labels(refusal)
    for limit in ("key", "address", "auth_failures"):
        RATE_LIMITED.labels(limit)
