"""Issue 13, item 5: a slow statement, a lock wait and an outage are told apart, to the client
(the error code), to Prometheus (the failures' `reason`, `segment_store_up`) and to the alerts;
heavy reads (model comparisons) are capped per worker. On a real PostgreSQL: the slowness and
the lock waits are real (another connection holds a lock the request needs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from app.main import create_app
from tests.api.test_assignments import CHAMPION, assert_error
from tests.cli.test_same_as_http import segments
from tests.conftest import clear_tables, count_rows, make_settings, metric_value
from tests.store.test_outage import database_refusing_connections


@contextmanager
def table_locked(database_url: str, table: str) -> Iterator[None]:
    """Another session holds an ACCESS EXCLUSIVE lock on `table` (as a long migration or a
    stuck transaction would) until the block ends."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            yield
    finally:
        engine.dispose()


def failures(client: TestClient, operation: str, reason: str) -> float:
    exposition = client.get("/metrics").text
    return metric_value(
        exposition, "segment_store_failures_total", operation=operation, reason=reason
    )


def store_up(client: TestClient) -> float:
    return metric_value(client.get("/metrics").text, "segment_store_up")


def test_a_lock_wait_is_store_lock_timeout_and_not_an_outage(
    database_url: str, rfm_model_dir: Path
) -> None:
    clear_tables(database_url)
    settings = make_settings(database_url, rfm_model_dir, db_lock_timeout_ms=300)
    with TestClient(create_app(settings)) as client:
        counted = {r: failures(client, "assign", r) for r in ("lock", "unavailable")}
        body = {"customer_id": "c-locked", "features": CHAMPION}
        assert (
            client.post("/v1/assignments", json={**body, "customer_id": "c-0"}).status_code == 200
        )
        assert store_up(client) == 1
        with table_locked(database_url, "memberships"):
            response = client.post("/v1/assignments", json=body)
            assert response.status_code == 503, response.text
            assert_error(response.json(), "store_lock_timeout", "store")
            assert response.headers["Retry-After"] == "1"
            assert "nothing was stored" in response.json()["error"]["message"]
        # counters are the process's (earlier tests' too): what this test added
        assert failures(client, "assign", "lock") == counted["lock"] + 1
        assert failures(client, "assign", "unavailable") == counted["unavailable"]
        assert store_up(client) == 1  # the database answered: slow, not down
        # the history row written before the lock wait was rolled back with the rest
        assert client.get("/v1/customers/c-locked/segment").status_code == 404
        assert count_rows(database_url, "assignments") == 1
        assert client.post("/v1/assignments", json=body).status_code == 200


def test_a_statement_past_the_timeout_is_store_timeout(
    database_url: str, rfm_model_dir: Path
) -> None:
    clear_tables(database_url)
    # no lock timeout: the read waits until the statement timeout cancels it
    settings = make_settings(
        database_url, rfm_model_dir, db_statement_timeout_ms=300, db_lock_timeout_ms=0
    )
    with TestClient(create_app(settings)) as client:
        counted = {r: failures(client, "lookup", r) for r in ("timeout", "unavailable")}
        assert client.post(
            "/v1/assignments", json={"customer_id": "c-1", "features": CHAMPION}
        ).is_success
        with table_locked(database_url, "memberships"):
            response = client.get("/v1/customers/c-1/segment")
        assert response.status_code == 503, response.text
        assert_error(response.json(), "store_timeout", "store")
        assert "ask for less" in response.json()["error"]["message"]
        assert failures(client, "lookup", "timeout") == counted["timeout"] + 1
        assert failures(client, "lookup", "unavailable") == counted["unavailable"]
        assert store_up(client) == 1
        assert client.get("/v1/customers/c-1/segment").status_code == 200


def test_an_outage_sets_segment_store_up_to_zero_until_the_database_answers(
    database_url: str, rfm_model_dir: Path
) -> None:
    clear_tables(database_url)
    with TestClient(create_app(make_settings(database_url, rfm_model_dir))) as client:
        counted = {r: failures(client, "assign", r) for r in ("timeout", "unavailable")}
        body = {"customer_id": "c-2", "features": CHAMPION}
        assert client.post("/v1/assignments", json=body).status_code == 200
        assert store_up(client) == 1
        with database_refusing_connections(database_url):
            response = client.post("/v1/assignments", json=body)
            assert response.status_code == 503
            assert_error(response.json(), "store_unavailable", "store")
            assert store_up(client) == 0
            assert failures(client, "assign", "unavailable") == counted["unavailable"] + 1
            assert failures(client, "assign", "timeout") == counted["timeout"]
        assert client.post("/v1/assignments", json=body).status_code == 200
        assert store_up(client) == 1


def test_comparisons_beyond_the_per_worker_cap_wait_then_get_busy(
    database_url: str, rfm_model_dir: Path, rfm_model_b: Path
) -> None:
    clear_tables(database_url)
    settings = make_settings(
        database_url,
        rfm_model_dir,
        comparisons_per_worker=1,
        comparison_queue_seconds=0.5,
        db_lock_timeout_ms=0,
        db_statement_timeout_ms=30_000,
    )
    with TestClient(create_app(settings)) as client:
        customers = [{"customer_id": f"c{i}", "features": CHAMPION} for i in range(200)]
        assert client.post("/v1/assignments/batch", json={"customers": customers}).is_success
        assert segments(database_url, "models", "register", str(rfm_model_b))[0] == 0
        comparison = "/v1/models/test-rfm-k5/comparison?sample=100"
        first: list[int] = []
        with table_locked(database_url, "assignments"):
            # the first comparison runs, held by the lock; the second finds the worker's one
            # slot taken, waits half a second and is refused
            running = threading.Thread(
                target=lambda: first.append(client.get(comparison).status_code)
            )
            running.start()
            _wait_for_lock_waiter(database_url)
            refused = client.get(comparison)
            assert refused.status_code == 503, refused.text
            assert_error(refused.json(), "busy", "model comparisons")
            assert refused.headers["Retry-After"] == "5"
            assert (
                "SEGMENTS_COMPARISONS_PER_WORKER"
                in refused.json()["error"]["details"][0]["problem"]
            )
        running.join(timeout=30)
        assert first == [200]
        # the slot is free again
        assert client.get(comparison).status_code == 200


def _wait_for_lock_waiter(database_url: str) -> None:
    """Until a session of the test database waits for a lock (the first comparison's read)."""
    engine = create_engine(database_url)
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(query).scalar_one():
                    return
            time.sleep(0.05)
        raise AssertionError("the first comparison never reached the locked table")
    finally:
        engine.dispose()
