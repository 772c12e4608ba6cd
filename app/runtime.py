"""What the lifespan builds once and every request uses: settings, the services, the models,
metrics. Fixed at construction: nothing sets its fields later."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from app.auth.guard import Guard
from app.clock import Clock
from app.lifecycle.holder import ModelHolder
from app.lifecycle.registry import ModelRegistry
from app.lifecycle.watcher import ModelWatcher
from app.service.assignments import AssignmentService
from app.service.audiences import AudienceService
from app.service.erasure import ErasureService
from app.service.events import EventService
from app.service.refresher import Refresher
from app.service.store import Store
from app.settings import Settings


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    models: ModelHolder
    assignments: AssignmentService
    audiences: AudienceService
    erasure: ErasureService
    events: EventService
    refresher: Refresher
    registry: ModelRegistry
    watcher: ModelWatcher
    store: Store
    live_registry: CollectorRegistry
    guard: Guard
    clock: Clock
