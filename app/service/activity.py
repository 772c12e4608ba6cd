"""Segments from purchase aggregates: each customer's features as of a moment, their assignment,
and when time alone would next change it. Used by every path that re-scores from aggregates:
new events (app.service.events) and time passing (app.service.refresher).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection

from app.audience.profile import CustomerProfile
from app.lifecycle.shadow import ShadowScorer
from app.scoring.horizon import days_until_change
from app.scoring.model import SegmentModel
from app.scoring.validation import ValidBatch
from app.service.assignments import AssignmentWriter, score
from app.store.assignments import AssignmentBatch
from app.store.events import Activity, set_due
from app.store.tables import Cause
from app.training.rfm import RFM_FEATURES, rfm_features

EMPTY = AssignmentBatch([], [], [], [], [], [], [], [])


def follows_purchases(model: SegmentModel) -> bool:
    """Whether the model's features are the RFM features purchase events maintain."""
    return model.manifest.kind == "rfm" and set(model.feature_names) == set(RFM_FEATURES)


@dataclass(frozen=True)
class Rescored:
    assignments: AssignmentBatch
    # for every customer given: when their segment next changes with time alone (None: never,
    # or not scored because their features are outside the model's ranges)
    due: dict[str, datetime | None]

    def store(self, conn: Connection, writer: AssignmentWriter, cause: Cause) -> set[str]:
        """Store the assignments with their customers' due times (one statement), and the due
        times of customers not scored; returns the erased customers' ids."""
        suppressed = writer.store(conn, self.assignments, cause, self.due)
        scored = set(self.assignments.customer_ids)
        if unscored := {c: d for c, d in self.due.items() if c not in scored}:
            set_due(conn, unscored)
        return suppressed


def rescore(
    model: SegmentModel,
    activity: Mapping[str, Activity],
    profiles: Mapping[str, CustomerProfile],
    now: datetime,
    shadow: ShadowScorer,
) -> Rescored:
    """The customers' assignments from their features as of `now`'s day (UTC)."""
    today = now.astimezone(UTC).date()
    records = []
    for customer_id, aggregates in activity.items():
        recency, frequency, monetary = rfm_features(
            aggregates.last_purchase_at.astimezone(UTC).date(),
            aggregates.orders,
            aggregates.spend,
            today,
        )
        features = {"recency_days": recency, "frequency": frequency, "monetary": monetary}
        records.append({"customer_id": customer_id, "features": features})
    due: dict[str, datetime | None] = dict.fromkeys(activity)
    valid = scorable(model, records)
    if valid is None:
        return Rescored(EMPTY, due)
    midnight = datetime.combine(today, time(), UTC)
    for customer_id, days in zip(
        valid.customer_ids, days_until_change(model, valid.numeric), strict=True
    ):
        due[customer_id] = None if days is None else midnight + timedelta(days=days)
    assignments = score(
        model,
        valid,
        [profiles.get(c) for c in valid.customer_ids] if profiles else None,
        mode="batch",
        now=now,
        shadow=shadow,
    )
    return Rescored(assignments, due)


def scorable(model: SegmentModel, records: list[dict[str, Any]]) -> ValidBatch | None:
    """The records (`{"customer_id", "features"}`) the model can score, validated; those it
    cannot (features outside its ranges, or another model's features) are left out. None when
    none is left."""
    valid, _ = model.validator.customers(records, "customers")
    if valid is None:
        records = [r for r in records if not model.validator.features(r["features"], "")]
        valid, _ = model.validator.customers(records, "customers")
    if valid is None or not valid.customer_ids:
        return None
    return valid
