"""Segments that stay true on real data: 300 Online Retail customers' rows replayed day by day
through POST /v1/events, the clock set to each day; every day, after the refresher's round,
each stored segment is the model's answer on the features the training code recomputes from
the raw rows as of that day. (bench/replay.py does all 4,339 customers and the feed.)"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from app.clock import ManualClock
from app.datafiles import normalise_ids, read_table
from app.main import create_app
from app.scoring.model import SegmentModel
from app.training.rfm import compute_rfm
from tests.api.test_events_real_data import COLUMNS, online_retail_events
from tests.conftest import DEFAULT_MODELS, ONLINE_RETAIL, clear_tables, make_settings

pytestmark = pytest.mark.slow
MODEL = SegmentModel.load(DEFAULT_MODELS / "online-retail-rfm-k5")


def test_a_day_by_day_replay_of_real_customers_is_never_stale(database_url: str) -> None:
    clear_tables(database_url)
    raw = read_table(ONLINE_RETAIL, COLUMNS.needed())
    raw["customer"] = normalise_ids(raw["CustomerID"])
    raw["day"] = pd.to_datetime(raw["InvoiceDate"], format="ISO8601").dt.date
    everyone = sorted(raw["customer"].dropna().unique())
    sample = set(np.random.default_rng(0).choice(everyone, 300, replace=False).tolist())
    raw = raw[raw["customer"].isin(sample)]
    by_day: dict[date, list[dict[str, object]]] = defaultdict(list)
    for event in online_retail_events():
        if event["customer_id"] in sample:
            by_day[datetime.fromisoformat(str(event["occurred_at"])).date()].append(event)
    first, last = min(by_day), max(by_day) + timedelta(days=60)  # and two months of no events
    clock = ManualClock(datetime.combine(first, time(), UTC))
    settings = make_settings(database_url, DEFAULT_MODELS, refresh_seconds=3600)
    engine = create_engine(database_url)
    moved_by_time = 0
    with TestClient(create_app(settings, clock)) as client:
        refresher = client.app_state["runtime"].refresher
        day = first
        while day <= last:
            clock.set(datetime.combine(day, time(23, 59, 59), UTC))
            if by_day.get(day):
                response = client.post("/v1/events", json={"events": by_day[day]})
                assert response.status_code == 200, response.text[:300]
            moved_by_time += refresher.refresh_due()
            with engine.connect() as conn:
                stored: dict[str, str] = dict(
                    conn.execute(text("SELECT customer_id, segment_key FROM memberships")).all()
                )
            assert stored == expected_segments(raw[raw["day"] <= day], day), day
            day += timedelta(days=1)
    engine.dispose()
    assert moved_by_time > 300  # time did move customers: the check above was not idle


def expected_segments(rows: pd.DataFrame, as_of: date) -> dict[str, str]:
    """The model's answer on the features training's compute_rfm gives these rows as of a day."""
    purchases = rows[~rows["InvoiceNo"].str.upper().str.startswith("C")]
    if purchases.empty:
        return {}
    features = compute_rfm(rows, COLUMNS, as_of=as_of).features
    clusters = MODEL.score_frame(features.reset_index(drop=True)).clusters.tolist()
    keys = MODEL.segment_keys_by_cluster
    return {c: keys[k] for c, k in zip(features.index, clusters, strict=True)}
