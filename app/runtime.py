"""What the lifespan builds once and every request uses: settings, service, engine, metrics."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from app.auth.guard import Guard
from app.lifecycle.registry import ModelRegistry
from app.lifecycle.watcher import ModelWatcher
from app.scoring.model import SegmentModel
from app.service import AssignmentService
from app.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    service: AssignmentService
    live_registry: CollectorRegistry
    registry: ModelRegistry
    watcher: ModelWatcher
    guard: Guard

    @property
    def model(self) -> SegmentModel:
        return self.service.model

    @property
    def segment_names(self) -> dict[str, str]:
        return self.service.segment_names
