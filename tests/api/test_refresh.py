"""Re-score on time: a customer's segment follows their growing recency with no event, on the
day the model says, on the real store, with the service's clock set by the test."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from app.clock import ManualClock
from app.main import create_app
from app.scoring.model import SegmentModel
from app.settings import PROJECT_ROOT
from app.training.rfm import rfm_features
from tests.api.test_events import event, send
from tests.conftest import DEFAULT_MODELS, clear_tables, make_settings, metric_value

TODAY = datetime(2011, 12, 10, 9, tzinfo=UTC)
MODEL = SegmentModel.load(DEFAULT_MODELS / "online-retail-rfm-k5")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(TODAY)


@pytest.fixture
def shop(database_url: str, clock: ManualClock) -> Iterator[TestClient]:
    clear_tables(database_url)
    # the background round is made rare here: these tests run rounds themselves
    settings = make_settings(database_url, DEFAULT_MODELS, refresh_seconds=3600)
    with TestClient(create_app(settings, clock)) as client:
        yield client


def model_segment(last_purchase: date, orders: int, spend: float, as_of: date) -> str:
    """What the model says of these aggregates as of a day: the answer to compare with."""
    from decimal import Decimal

    recency, frequency, monetary = rfm_features(last_purchase, orders, Decimal(repr(spend)), as_of)
    scores = MODEL.score_arrays(np.array([[recency, frequency, monetary]]), [])
    return MODEL.segment_keys_by_cluster[int(scores.clusters[0])]


def due_at(database_url: str, customer: str) -> datetime | None:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT due_at FROM customer_activity WHERE customer_id = :c"), {"c": customer}
        ).scalar_one()
    engine.dispose()
    return value  # type: ignore[no-any-return]


def feed(database_url: str, customer: str) -> list[tuple[str, str, str]]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT event, segment_key, cause FROM membership_events "
                "WHERE customer_id = :c ORDER BY id"
            ),
            {"c": customer},
        ).all()
    engine.dispose()
    return [(row[0], row[1], row[2]) for row in rows]


def segment_of(client: TestClient, customer: str) -> str:
    response = client.get(f"/v1/customers/{customer}/segment")
    assert response.status_code == 200, response.text
    key: str = response.json()["segment"]["key"]
    return key


def one_recent_big_spender(client: TestClient) -> tuple[str, date]:
    """A customer who bought a lot yesterday, eight times: time alone will move them."""
    day = (TODAY - timedelta(days=1)).date()
    send(client, *[event(f"e{i}", "c1", day, 400.0, order_id=f"o{i}") for i in range(8)])
    return "c1", day


def test_a_customer_moves_with_time_alone_on_the_day_the_model_says(
    shop: TestClient, clock: ManualClock, database_url: str
) -> None:
    customer, last = one_recent_big_spender(shop)
    first = segment_of(shop, customer)
    assert first == model_segment(last, 8, 3200.0, TODAY.date())
    due = due_at(database_url, customer)
    assert due is not None
    assert due > TODAY
    # the model itself agrees: the same segment every day before the due day, another on it
    for day in range(1, (due.date() - TODAY.date()).days):
        assert model_segment(last, 8, 3200.0, TODAY.date() + timedelta(days=day)) == first
    moved_to = model_segment(last, 8, 3200.0, due.date())
    assert moved_to != first

    runtime = shop.app_state["runtime"]
    clock.set(due - timedelta(seconds=1))
    assert runtime.refresher.refresh_due() == 0
    assert segment_of(shop, customer) == first
    clock.set(due)
    metrics = shop.get("/metrics").text
    assert metric_value(metrics, "segment_customers_due") == 1
    assert metric_value(metrics, "segment_refresh_lag_seconds") == 0
    clock.set(due + timedelta(seconds=30))
    assert metric_value(shop.get("/metrics").text, "segment_refresh_lag_seconds") == 30
    assert runtime.refresher.refresh_due() == 1
    assert segment_of(shop, customer) == moved_to
    assert feed(database_url, customer)[-2:] == [
        ("exited", first, "time"),
        ("entered", moved_to, "time"),
    ]
    metrics = shop.get("/metrics").text
    assert metric_value(metrics, "segment_customers_due") == 0
    assert metric_value(metrics, "segment_refreshed_customers_total", cause="time") == 1
    # the next due time is the next change, and the stored features are today's
    following = due_at(database_url, customer)
    assert following is None or following > due
    assert runtime.refresher.refresh_due() == 0


def test_a_purchase_before_the_due_time_moves_the_due_time(
    shop: TestClient, clock: ManualClock, database_url: str
) -> None:
    customer, _ = one_recent_big_spender(shop)
    due = due_at(database_url, customer)
    assert due is not None
    clock.set(due - timedelta(hours=12))
    send(shop, event("late", customer, (due - timedelta(days=1)).date(), 10.0, order_id="o-late"))
    later = due_at(database_url, customer)
    assert later is not None
    assert later > due
    clock.set(due)
    assert shop.app_state["runtime"].refresher.refresh_due() == 0


def test_the_refresher_runs_by_itself_every_refresh_seconds(
    database_url: str, clock: ManualClock
) -> None:
    clear_tables(database_url)
    settings = make_settings(database_url, DEFAULT_MODELS, refresh_seconds=0.2)
    with TestClient(create_app(settings, clock)) as client:
        customer, _ = one_recent_big_spender(client)
        first = segment_of(client, customer)
        due = due_at(database_url, customer)
        assert due is not None
        clock.set(due)
        deadline = time.monotonic() + 10
        while segment_of(client, customer) == first:
            assert time.monotonic() < deadline, "the background refresher did not run"
            time.sleep(0.05)


def many_customers(client: TestClient, count: int) -> None:
    """`count` customers with one order each, on days spread over the last year."""
    events = [
        event(f"m{i}", f"cust-{i:04d}", (TODAY - timedelta(days=i % 300 + 1)).date(), 20.0 + i)
        for i in range(count)
    ]
    for start in range(0, count, 500):
        send(client, *events[start : start + 500])


def time_moves(database_url: str) -> list[tuple[str, str]]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT customer_id, event FROM membership_events WHERE cause = 'time'")
        ).all()
    engine.dispose()
    return [(row[0], row[1]) for row in rows]


def test_two_refreshers_share_the_due_customers_and_each_moves_once(
    database_url: str, clock: ManualClock
) -> None:
    clear_tables(database_url)
    settings = make_settings(database_url, DEFAULT_MODELS, refresh_seconds=3600, refresh_chunk=20)
    with (
        TestClient(create_app(settings, clock)) as one,
        TestClient(create_app(settings, clock)) as two,
    ):
        many_customers(one, 600)
        clock.advance(timedelta(days=120))
        counts: list[int] = []
        threads = [
            threading.Thread(
                target=lambda c=c: counts.append(c.app_state["runtime"].refresher.refresh_due())
            )
            for c in (one, two)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(counts), f"both refreshers should have found work: {counts}"
        moves = time_moves(database_url)
        moved = {customer for customer, _ in moves}
        assert len(moves) == 2 * len(moved)  # one exited and one entered each, never twice
        assert sum(counts) >= len(moved)
        # nothing is left due, and every stored segment is the model's answer as of today
        assert one.app_state["runtime"].refresher.refresh_due() == 0
        for i in range(0, 600, 37):
            last = (TODAY - timedelta(days=i % 300 + 1)).date()
            assert segment_of(one, f"cust-{i:04d}") == model_segment(
                last, 1, 20.0 + i, clock.now().date()
            )


_KILLED_MID_CHUNK = textwrap.dedent(
    """
    # A refresher that claims a chunk, scores and stores it, and is killed before it commits.
    import sys
    from datetime import datetime
    from pathlib import Path
    from sqlalchemy import create_engine
    from app.audience.erasure import IdHasher
    from app.lifecycle.shadow import ShadowScorer
    from app.lifecycle.holder import ModelHolder
    from app.scoring.model import SegmentModel
    from app.service.activity import rescore
    from app.store.assignments import store_batch
    from app.store.events import claim_due, set_due
    from app.store.tables import Cause

    url, model_dir, now = sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3])
    model = SegmentModel.load(Path(model_dir))
    engine = create_engine(url)
    with engine.begin() as conn:
        due = claim_due(conn, now, 50, model.version)
        rescored = rescore(model, {a.customer_id: a for a, _ in due}, {}, now,
                           ShadowScorer(ModelHolder(model), 1.0))
        store_batch(conn, rescored.assignments, IdHasher("test"), Cause.TIME)
        set_due(conn, rescored.due)
        print(len(due), flush=True)
        sys.stdin.read()  # killed here, mid-chunk, holding its rows
    """
)


def test_a_refresher_killed_mid_chunk_loses_nothing(database_url: str, clock: ManualClock) -> None:
    clear_tables(database_url)
    settings = make_settings(database_url, DEFAULT_MODELS, refresh_seconds=3600)
    with TestClient(create_app(settings, clock)) as client:
        many_customers(client, 300)
        clock.advance(timedelta(days=120))
        with subprocess.Popen(
            [
                sys.executable,
                "-c",
                _KILLED_MID_CHUNK,
                database_url,
                str(DEFAULT_MODELS / "online-retail-rfm-k5"),
                clock.now().isoformat(),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(PROJECT_ROOT),
            text=True,
        ) as killed:
            assert killed.stdout is not None
            line = killed.stdout.readline()
            assert line, "the refresher to kill did not start: run the script by hand"
            claimed = int(line)
            assert claimed == 50
            refresher = client.app_state["runtime"].refresher
            first_round = refresher.refresh_due()  # the killed one's rows: skipped, not awaited
            killed.kill()
        second_round = _after_the_backend_noticed(refresher.refresh_due)
        assert second_round == claimed
        moves = time_moves(database_url)
        moved = {customer for customer, _ in moves}
        assert len(moves) == 2 * len(moved)  # nothing of the killed chunk was kept
        assert first_round + second_round >= len(moved)
        assert refresher.refresh_due() == 0
        for i in range(300):
            last = (TODAY - timedelta(days=i % 300 + 1)).date()
            assert segment_of(client, f"cust-{i:04d}") == model_segment(
                last, 1, 20.0 + i, clock.now().date()
            )


def _after_the_backend_noticed(work: Any) -> int:
    """PostgreSQL rolls a killed client's transaction back once it sees the socket close."""
    deadline = time.monotonic() + 10
    while True:
        done: int = work()
        if done or time.monotonic() > deadline:
            return done
        time.sleep(0.1)
