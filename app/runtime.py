"""What the lifespan builds once and every request uses: settings, model, engine, service."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from app.scoring.model import SegmentModel
from app.service import AssignmentService
from app.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    model: SegmentModel
    engine: Engine
    service: AssignmentService
    live_registry: CollectorRegistry
