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
from sqlalchemy import Text, case, create_engine, distinct, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.scoring.artifact import load_artifact
from app.settings import Settings
from app.store.tables import Assignment, Membership, PurchaseEvent


class Customer(BaseModel):
    customer_id: str
    features: dict[str, Any]


class Batch(BaseModel):
    customers: list[Customer]


class Event(BaseModel):
    event_id: str
    customer_id: str
    occurred_at: datetime
    amount: float
    type: str
    order_id: str | None = None


class Events(BaseModel):
    events: list[Event]


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
            add_all(session, customers, labels, now)

    def add_all(
        session: Session, customers: list[Customer], labels: list[int], now: datetime
    ) -> None:
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

    @app.post("/v1/events")
    def events(body: Events) -> dict[str, Any]:
        """The usual way: insert the orders with the ORM, recompute each customer's RFM with a
        GROUP BY over all their orders, predict with pandas and the pipeline, store as above."""
        now = datetime.now(UTC)
        customers = sorted({e.customer_id for e in body.events})
        with sessions.begin() as session:
            for e in body.events:
                counted = e.type == "order" and e.amount >= 0
                counted = counted and not (e.order_id or "").startswith("C")
                session.merge(
                    PurchaseEvent(
                        event_id=e.event_id,
                        customer_id=e.customer_id,
                        occurred_at=e.occurred_at,
                        amount=e.amount,
                        type=e.type,
                        order_id=e.order_id,
                        currency=None,
                        counted=counted,
                        received_at=now,
                    )
                )
            session.flush()
            order = case(
                (PurchaseEvent.order_id.is_(None), func.cast(PurchaseEvent.occurred_at, Text)),
                else_=PurchaseEvent.order_id,
            )
            rows = session.execute(
                select(
                    PurchaseEvent.customer_id,
                    func.max(PurchaseEvent.occurred_at),
                    func.count(distinct(order)),
                    func.sum(PurchaseEvent.amount),
                )
                .where(PurchaseEvent.customer_id.in_(customers), PurchaseEvent.counted)
                .group_by(PurchaseEvent.customer_id)
            ).all()
            frame = pd.DataFrame(
                {
                    "recency_days": [float((now.date() - r[1].date()).days) for r in rows],
                    "frequency": [int(r[2]) for r in rows],
                    "monetary": [round(float(r[3]), 2) for r in rows],
                }
            )
            labels = [int(x) for x in pipeline.predict(frame)] if rows else []
            scored = [
                Customer(
                    customer_id=r[0],
                    features=dict(zip(frame.columns, frame.iloc[i].tolist(), strict=True)),
                )
                for i, r in enumerate(rows)
            ]
            add_all(session, scored, labels, now)  # one transaction, as the service's
        return {
            "model_version": version,
            "customers": [answer(c, x, now) for c, x in zip(scored, labels, strict=True)],
        }

    return app
