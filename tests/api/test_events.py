"""POST /v1/events: purchase events keep each customer's aggregates and re-score them, on the
real store, with the service's clock set by the test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from app.clock import ManualClock
from app.main import create_app
from app.settings import Settings
from app.training.rfm import rfm_features
from tests.conftest import DEFAULT_MODELS, clear_tables, count_rows, make_settings, metric_value

TODAY = datetime(2011, 12, 10, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(TODAY)


@pytest.fixture
def shop(database_url: str, clock: ManualClock) -> Iterator[TestClient]:
    """The service on the default model (trained on Online Retail, in GBP), over an empty store."""
    clear_tables(database_url)
    with TestClient(create_app(make_settings(database_url, DEFAULT_MODELS), clock)) as client:
        yield client


def event(event_id: str, customer: str, day: date, amount: float, **extra: Any) -> dict[str, Any]:
    moment = datetime(day.year, day.month, day.day, 10, tzinfo=UTC).isoformat()
    return {
        "event_id": event_id,
        "customer_id": customer,
        "occurred_at": moment,
        "amount": amount,
        "type": "order",
    } | extra


def send(client: TestClient, *events: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/events", json={"events": list(events)})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def activity(database_url: str, customer: str) -> dict[str, Any] | None:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        row = (
            conn.execute(
                text("SELECT * FROM customer_activity WHERE customer_id = :c"), {"c": customer}
            )
            .mappings()
            .first()
        )
    engine.dispose()
    return dict(row) if row is not None else None


def stored_features(client: TestClient, customer: str) -> dict[str, Any]:
    """The features the customer's current segment was computed from."""
    runtime = client.app_state["runtime"]
    with runtime.store.engine.connect() as conn:
        features: dict[str, Any] = conn.execute(
            text(
                "SELECT features FROM assignments WHERE customer_id = :c "
                "ORDER BY assigned_at DESC, id DESC LIMIT 1"
            ),
            {"c": customer},
        ).scalar_one()
    return features


def test_an_order_is_stored_and_its_customer_scored_from_all_their_purchases(
    shop: TestClient, database_url: str
) -> None:
    first = send(shop, event("e1", "c1", date(2011, 12, 1), 120.5, order_id="A1"))
    assert first["events"] == {"stored": 1, "duplicate": 0, "suppressed": 0}
    (answer,) = first["customers"]
    assert answer["customer_id"] == "c1"
    assert answer["model_version"] == "online-retail-rfm-k5"
    assert answer["assigned_at"].startswith("2011-12-10T00:00:00")  # the service's clock
    # two more lines of another order, sent out of order
    send(
        shop,
        event("e3", "c1", date(2011, 12, 8), 0.45, order_id="A2"),
        event("e2", "c1", date(2011, 12, 3), 9.1, order_id="A2"),
    )
    assert stored_features(shop, "c1") == {"recency_days": 2.0, "frequency": 2, "monetary": 130.05}
    kept = activity(database_url, "c1")
    assert kept is not None
    assert kept["orders"] == 2
    assert kept["spend"] == Decimal("130.05")  # exact: 120.5 + 9.1 + 0.45
    current = shop.get("/v1/customers/c1/segment").json()
    assert current["segment"] == answer["segment"] or current["assigned_at"] > answer["assigned_at"]


def test_returns_and_cancellations_do_not_count_as_in_training(
    shop: TestClient, database_url: str
) -> None:
    body = send(
        shop,
        event("r1", "only-returns", date(2011, 12, 1), 30.0, type="return"),
        event("k1", "c2", date(2011, 12, 1), 50.0, order_id="B1"),
        event("k2", "c2", date(2011, 12, 2), -50.0, order_id="B1"),  # a negative amount
        event("k3", "c2", date(2011, 12, 9), 70.0, order_id="C551"),  # Online Retail's C prefix
    )
    assert body["events"]["stored"] == 4  # every event is kept, as sent
    assert body["unscored"] == ["only-returns"]  # no purchase that counts: no segment yet
    assert [c["customer_id"] for c in body["customers"]] == ["c2"]
    assert stored_features(shop, "c2") == {"recency_days": 9.0, "frequency": 1, "monetary": 50.0}
    assert activity(database_url, "only-returns") is None


def test_a_retried_batch_is_stored_once_and_answered_again(
    shop: TestClient, database_url: str
) -> None:
    batch = [
        event("a", "c3", date(2011, 11, 1), 10.0, order_id="O1"),
        event("b", "c4", date(2011, 11, 2), 20.0, order_id="O2"),
    ]
    first = send(shop, *batch)
    again = send(shop, *batch)
    assert again["events"] == {"stored": 0, "duplicate": 2, "suppressed": 0}
    assert again["customers"] == first["customers"]  # the stored segments, nothing re-scored
    assert count_rows(database_url, "purchase_events") == 2
    assert count_rows(database_url, "assignments") == 2
    # an event id repeated inside one batch counts once too
    twice = send(
        shop, event("z", "c5", date(2011, 12, 1), 5.0), event("z", "c5", date(2011, 12, 1), 5.0)
    )
    assert twice["events"] == {"stored": 1, "duplicate": 1, "suppressed": 0}
    assert activity(database_url, "c5") is not None
    assert stored_features(shop, "c5")["monetary"] == 5.0


def test_out_of_order_arrival_gives_the_same_aggregates(
    shop: TestClient, database_url: str
) -> None:
    days = [date(2011, 1, 3) + timedelta(days=17 * i) for i in range(12)]
    forward = [
        event(f"f{i}", "in-order", d, 3.3 + i, order_id=f"F{i // 2}") for i, d in enumerate(days)
    ]
    backward = [
        event(f"b{i}", "shuffled", d, 3.3 + i, order_id=f"F{i // 2}") for i, d in enumerate(days)
    ][::-1]
    for one in forward:
        send(shop, one)
    send(shop, *backward[:5])
    for one in backward[5:]:
        send(shop, one)
    a, b = activity(database_url, "in-order"), activity(database_url, "shuffled")
    assert a is not None
    assert b is not None
    assert (a["first_purchase_at"], a["last_purchase_at"], a["orders"], a["spend"]) == (
        b["first_purchase_at"],
        b["last_purchase_at"],
        b["orders"],
        b["spend"],
    )
    assert a["orders"] == 6
    assert stored_features(shop, "in-order") == stored_features(shop, "shuffled")


def test_a_bad_event_names_its_row_and_field_and_nothing_is_stored(
    shop: TestClient, database_url: str, clock: ManualClock
) -> None:
    good = event("ok", "c6", date(2011, 12, 1), 10.0)
    bad = [
        good,
        {**event("e", "c6", date(2011, 12, 1), 10.0), "currency": "EUR"},
        {**event("f", "c6", date(2011, 12, 1), 10.0), "occurred_at": "2011-12-01T10:00:00"},
        {**event("g", "c6", date(2011, 12, 1), 10.0), "occurred_at": "2011-12-11T10:00:00Z"},
        {**event("h", "c6", date(2011, 12, 1), 10.0), "type": "refund", "colour": "red"},
        {**event("i", "c/6", date(2011, 12, 1), 2e9)},
        # found by schemathesis: both were 500s (a dict is unhashable; PostgreSQL stores
        # offsets up to ±15:59 where RFC 3339 and Python allow ±23:59)
        {**event("j", "c6", date(2011, 12, 1), 10.0), "type": {}},
        {**event("k", "c6", date(2011, 12, 1), 10.0), "occurred_at": "2011-12-01T10:00:00-19:14"},
    ]
    response = shop.post("/v1/events", json={"events": bad}, headers={})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert "7 of the 8 events are invalid; nothing was stored" in error["message"]
    locs = {d["loc"]: d["problem"] for d in error["details"]}
    assert "model's spend is in GBP" in locs["events[1].currency"]
    assert "no time zone" in locs["events[2].occurred_at"]
    assert "in the future" in locs["events[3].occurred_at"]
    assert locs["events[4].type"] == "must be order or return"
    assert locs["events[4].colour"] == "is not a field of an event"
    assert "events[5].customer_id" in locs
    assert "events[5].amount" in locs
    assert locs["events[6].type"] == "must be order or return"
    assert "offset beyond ±15:59" in locs["events[7].occurred_at"]
    assert count_rows(database_url, "purchase_events") == 0
    # the same currency as the model's is fine, in any case
    assert send(shop, {**good, "currency": "gbp"})["events"]["stored"] == 1
    too_many = shop.post("/v1/events", json={"events": [good] * 10_001})
    assert too_many.status_code == 413
    assert too_many.json()["error"]["details"][0]["loc"] == "events"


def test_events_of_an_erased_customer_are_acknowledged_not_stored_and_erasure_takes_them(
    shop: TestClient, database_url: str
) -> None:
    send(
        shop,
        event("p1", "gone", date(2011, 12, 1), 40.0),
        event("p2", "stays", date(2011, 12, 1), 1.0),
    )
    erased = shop.post("/v1/erasures", json={"customer_ids": ["gone"]}).json()
    assert erased["customers"][0]["purchase_events"] == 1
    assert activity(database_url, "gone") is None
    later = send(
        shop,
        event("p3", "gone", date(2011, 12, 2), 40.0),
        event("p4", "stays", date(2011, 12, 2), 1.0),
    )
    assert later["events"] == {"stored": 1, "duplicate": 0, "suppressed": 1}
    # nor is a return, which scores nobody
    returned = send(shop, event("p5", "gone", date(2011, 12, 3), 40.0, type="return"))
    assert returned["events"] == {"stored": 0, "duplicate": 0, "suppressed": 1}
    assert returned["unscored"] == []
    assert [c["customer_id"] for c in later["customers"]] == ["stays"]
    engine = create_engine(database_url)
    with engine.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM purchase_events WHERE customer_id = 'gone'")
        ).scalar_one()
    engine.dispose()
    assert left == 0
    assert activity(database_url, "gone") is None
    assert shop.get("/v1/customers/gone/segment").status_code == 404
    exposition = shop.get("/metrics").text
    assert metric_value(exposition, "segment_events_total", outcome="suppressed") >= 1


def test_a_model_that_does_not_take_rfm_refuses_events(
    database_url: str, bank_model_dir: Path
) -> None:
    clear_tables(database_url)
    settings: Settings = make_settings(database_url, bank_model_dir)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/events", json={"events": [event("x", "c", date(2011, 12, 1), 1.0)]}
        )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "events_unsupported"


def test_features_follow_the_clock_not_the_arrival(shop: TestClient, clock: ManualClock) -> None:
    send(shop, event("t1", "c7", date(2011, 12, 1), 12.0))
    clock.set(datetime(2012, 3, 1, 12, tzinfo=UTC))
    send(shop, event("t2", "c7", date(2011, 11, 1), 8.0))  # a late, older purchase
    assert stored_features(shop, "c7") == {
        "recency_days": float(rfm_features(date(2011, 12, 1), 2, Decimal(20), date(2012, 3, 1))[0]),
        "frequency": 2,
        "monetary": 20.0,
    }
