"""The usual way, as a baseline: FastAPI + pydantic + a DataFrame + Pipeline.predict + the ORM.

Same model artifact, same tables, same routes as the service; nothing tuned. Run with
`uvicorn bench.baseline_app:create_app --factory` (DATABASE_URL and SEGMENTS_MODEL_DIR as usual).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from app.scoring.artifact import load_artifact
from app.settings import Settings
from app.store.tables import Assignment, Membership


class Customer(BaseModel):
    customer_id: str
    features: dict[str, Any]


class Batch(BaseModel):
    customers: list[Customer]


def create_app() -> FastAPI:
    settings = Settings()
    artifact = load_artifact(settings.model_dir)
    pipeline = artifact.pipeline
    segments = artifact.manifest.segment_by_cluster()
    version = artifact.manifest.version
    sessions = sessionmaker(create_engine(settings.database))
    app = FastAPI()

    def answer(customer: Customer, label: int, now: datetime) -> dict[str, Any]:
        segment = segments[label]
        return {
            "customer_id": customer.customer_id,
            "segment": {"id": segment.id, "key": segment.key, "name": segment.name},
            "model_version": version,
            "assigned_at": now.isoformat(),
        }

    def persist_all(customers: list[Customer], labels: list[int], now: datetime) -> None:
        with sessions.begin() as session:
            for customer, label in zip(customers, labels, strict=True):
                segment = segments[label]
                common = {
                    "customer_id": customer.customer_id,
                    "segment_id": segment.id,
                    "segment_key": segment.key,
                    "model_version": version,
                    "distance": 0.0,
                    "confidence": 0.0,
                    "assigned_at": now,
                }
                session.add(Assignment(features=customer.features, **common))
                session.merge(Membership(entered_at=now, **common))

    @app.post("/v1/assignments")
    def single(customer: Customer, persist: bool = True) -> dict[str, Any]:
        label = int(pipeline.predict(pd.DataFrame([customer.features]))[0])
        now = datetime.now(UTC)
        if persist:
            persist_all([customer], [label], now)
        return answer(customer, label, now)

    @app.post("/v1/assignments/batch")
    def batch(body: Batch, persist: bool = True) -> dict[str, Any]:
        frame = pd.DataFrame([c.features for c in body.customers])
        labels = [int(x) for x in pipeline.predict(frame)]
        now = datetime.now(UTC)
        if persist:
            persist_all(body.customers, labels, now)
        return {
            "model_version": version,
            "assignments": [answer(c, x, now) for c, x in zip(body.customers, labels, strict=True)],
        }

    return app
