"""The database going away and coming back, on a real PostgreSQL: fail fast, lose nothing, recover."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError
from starlette.testclient import TestClient

from app.main import create_app
from app.scoring.model import SegmentModel
from app.settings import Settings
from app.store.assignments import AssignmentBatch, AssignmentRow, store_batch
from tests.api.test_assignments import CHAMPION, assert_error
from tests.conftest import (
    TEST_ID_HASH,
    clear_tables,
    count_rows,
    make_settings,
    metric_value,
    store_on,
)


@contextmanager
def database_refusing_connections(database_url: str) -> Iterator[None]:
    """Close every connection to the test database and refuse new ones, as if it went down."""
    name = make_url(database_url).database
    admin = create_engine(
        make_url(database_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
            {"n": name},
        )
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true'))
        admin.dispose()


def test_store_outage_fails_fast_and_recovers_without_restart(
    database_url: str, rfm_model_dir: Path
) -> None:
    clear_tables(database_url)
    settings: Settings = make_settings(database_url, rfm_model_dir)
    with TestClient(create_app(settings)) as client:
        assert (
            client.post(
                "/v1/assignments", json={"customer_id": "before", "features": CHAMPION}
            ).status_code
            == 200
        )

        counted = metric_value(client.get("/metrics").text, "segment_assignments_total")
        with database_refusing_connections(database_url):
            started = time.monotonic()
            response = client.post(
                "/v1/assignments", json={"customer_id": "during", "features": CHAMPION}
            )
            assert response.status_code == 503
            assert_error(response.json(), "store_unavailable", "store")
            # a guard against hanging, not a performance figure: the pool and connect timeouts are 2 s
            assert time.monotonic() - started < 10

            batch = [{"customer_id": f"b{i}", "features": CHAMPION} for i in range(10)]
            assert (
                client.post("/v1/assignments/batch", json={"customers": batch}).status_code == 503
            )
            scored = client.post(
                "/v1/assignments?persist=false",
                json={"customer_id": "during", "features": CHAMPION},
            )
            assert scored.status_code == 200
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert_error(ready.json(), "not_ready", "store")
            assert "password" not in ready.text
            metrics = client.get("/metrics")
            assert metrics.status_code == 200  # drift is skipped, the rest still exported
            # only the persist=false scoring counts: nothing refused was counted as assigned
            assert metric_value(metrics.text, "segment_assignments_total") == counted + 1
            assert "127.0.0.1" not in response.text  # the driver's message stays in the log

        # back: the very next request works, no restart
        assert client.get("/readyz").status_code == 200
        after = client.post("/v1/assignments", json={"customer_id": "after", "features": CHAMPION})
        assert after.status_code == 200
    assert count_rows(database_url, "assignments") == 2  # before and after; nothing from the outage
    assert count_rows(database_url, "memberships") == 2


def test_connections_the_server_closed_while_idle_fail_no_request(
    database_url: str, rfm_model_dir: Path
) -> None:
    # a database restart (or an idle-connection killer) while the service is idle: each pooled
    # connection is found closed as it is handed out and replaced, so no request sees it
    clear_tables(database_url)
    name = make_url(database_url).database
    admin = create_engine(
        make_url(database_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    with TestClient(create_app(make_settings(database_url, rfm_model_dir))) as client:
        for round_ in range(3):
            for index in range(5):
                body = {"customer_id": f"c{round_}.{index}", "features": CHAMPION}
                assert client.post("/v1/assignments", json=body).status_code == 200
                assert client.get(f"/v1/customers/c{round_}.{index}/segment").status_code == 200
            with admin.connect() as conn:
                closed = conn.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                        "FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": name},
                ).scalar()
            assert closed  # the service's pooled connections
            # idle past the time a returned connection is trusted (app.store.engine): then
            # every one is checked as it is handed out
            time.sleep(1.2)
    admin.dispose()
    assert count_rows(database_url, "memberships") == 15


def test_failure_mid_write_rolls_back(database_url: str, rfm_model_dir: Path) -> None:
    """Rows written before a failure in the same request's transaction are not kept."""
    clear_tables(database_url)
    version = SegmentModel.load(rfm_model_dir).version
    now = datetime.now(UTC)
    good = AssignmentRow("ok", 0, "champions", version, 0.1, 0.9, {"recency_days": 1.0}, now)
    with store_on(database_url) as store:
        with pytest.raises(RuntimeError), store.transaction("assign") as conn:
            store_batch(conn, AssignmentBatch.of_rows([good]), TEST_ID_HASH)
            raise RuntimeError("the process fails between two writes")
        # the database itself refusing the second write (an id longer than the column)
        too_long = AssignmentRow("x" * 200, 0, "champions", version, 0.1, 0.9, {}, now)
        with pytest.raises(DataError), store.transaction("assign") as conn:
            store_batch(conn, AssignmentBatch.of_rows([good]), TEST_ID_HASH)
            store_batch(conn, AssignmentBatch.of_rows([too_long]), TEST_ID_HASH)
    assert count_rows(database_url, "assignments") == 0
    assert count_rows(database_url, "memberships") == 0
