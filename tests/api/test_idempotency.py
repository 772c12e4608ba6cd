"""Issue 13, item 3: retries are safe with an Idempotency-Key, on a real PostgreSQL: the same key
and body answer the first answer and store nothing more, another body is a 422, concurrent
duplicates (in one group commit or across workers) store once, a failed request keeps no key,
and keys are forgotten after their time."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import create_engine
from starlette.testclient import TestClient

from app.clock import ManualClock
from app.main import create_app
from app.store.idempotency import prune_keys
from tests.api.test_assignments import CHAMPION, assert_error
from tests.api.test_events import TODAY, event
from tests.conftest import DEFAULT_MODELS, clear_tables, count_rows, make_settings
from tests.servers import segments_server

AT_RISK = {"recency_days": 300, "frequency": 1, "monetary": 40.0}


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def test_a_retried_single_assignment_answers_the_first_answer_and_stores_once(
    client: TestClient, database_url: str
) -> None:
    key = str(uuid.uuid4())
    body = {"customer_id": "c1", "features": CHAMPION}
    first = client.post("/v1/assignments", json=body, headers=keyed(key))
    assert first.status_code == 200, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = client.post("/v1/assignments", json=body, headers=keyed(key))
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content  # the same assigned_at: the first answer
    assert count_rows(database_url, "assignments") == 1
    assert count_rows(database_url, "membership_events") == 1  # one `entered`, not two


def test_the_same_key_with_another_body_is_refused_and_changes_nothing(
    client: TestClient, database_url: str
) -> None:
    key = str(uuid.uuid4())
    assert client.post(
        "/v1/assignments", json={"customer_id": "c1", "features": CHAMPION}, headers=keyed(key)
    ).is_success
    # a late retry of an older request must not overwrite the newer state
    other = client.post(
        "/v1/assignments", json={"customer_id": "c1", "features": AT_RISK}, headers=keyed(key)
    )
    assert other.status_code == 422
    assert_error(other.json(), "idempotency_key_reused", "Idempotency-Key")
    assert count_rows(database_url, "assignments") == 1
    assert client.get("/v1/customers/c1/segment").json()["segment"]["key"] == "champions"
    # a new key is a new request
    assert client.post(
        "/v1/assignments",
        json={"customer_id": "c1", "features": AT_RISK},
        headers=keyed(str(uuid.uuid4())),
    ).is_success
    assert count_rows(database_url, "assignments") == 2


def test_a_retried_batch_stores_once(client: TestClient, database_url: str) -> None:
    key = str(uuid.uuid4())
    body = {"customers": [{"customer_id": f"b{i}", "features": CHAMPION} for i in range(500)]}
    first = client.post("/v1/assignments/batch", json=body, headers=keyed(key))
    assert first.status_code == 200
    again = client.post("/v1/assignments/batch", json=body, headers=keyed(key))
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert count_rows(database_url, "assignments") == 500
    # keys are per route: the same key on the single route is another request
    single = {"customer_id": "s1", "features": CHAMPION}
    assert client.post("/v1/assignments", json=single, headers=keyed(key)).is_success
    assert count_rows(database_url, "assignments") == 501


def test_a_failed_request_keeps_no_key(client: TestClient, database_url: str) -> None:
    key = str(uuid.uuid4())
    bad = {"customers": [{"customer_id": "b1", "features": {"recency_days": -5}}]}
    assert client.post("/v1/assignments/batch", json=bad, headers=keyed(key)).status_code == 422
    good = {"customers": [{"customer_id": "b1", "features": CHAMPION}]}
    fixed = client.post("/v1/assignments/batch", json=good, headers=keyed(key))
    assert fixed.status_code == 200
    assert "Idempotent-Replayed" not in fixed.headers
    assert count_rows(database_url, "assignments") == 1


@pytest.mark.parametrize("persist", ["true", "false"])
@pytest.mark.parametrize("route", ["/v1/assignments", "/v1/assignments/batch"])
def test_a_malformed_key_is_a_422_naming_the_header(
    client: TestClient, route: str, persist: str
) -> None:
    # scoring only stores nothing, but a malformed key is still a wrong request (schemathesis
    # found one taken with ?persist=false)
    customer = {"customer_id": "c1", "features": CHAMPION}
    body = customer if route == "/v1/assignments" else {"customers": [customer]}
    for key in (b"", b"x" * 256, "naïve".encode(), b"two words"):
        answer = client.post(
            route,
            params={"persist": persist},
            json=body,
            headers={"Idempotency-Key": key},  # type: ignore[arg-type]
        )
        assert answer.status_code == 422, key
        assert_error(answer.json(), "invalid_input", "Idempotency-Key")


def test_scoring_only_ignores_the_key(client: TestClient, database_url: str) -> None:
    key = str(uuid.uuid4())
    body = {"customer_id": "c1", "features": CHAMPION}
    for _ in range(2):
        answer = client.post(
            "/v1/assignments", params={"persist": "false"}, json=body, headers=keyed(key)
        )
        assert answer.status_code == 200
        assert "Idempotent-Replayed" not in answer.headers
    assert count_rows(database_url, "assignments") == 0


def test_keys_are_forgotten_after_their_time(client: TestClient, database_url: str) -> None:
    key = str(uuid.uuid4())
    body = {"customer_id": "c1", "features": CHAMPION}
    assert client.post("/v1/assignments", json=body, headers=keyed(key)).is_success
    engine = create_engine(database_url)
    with engine.begin() as conn:
        assert prune_keys(conn, datetime.now(UTC), hours=24) == 0
        assert prune_keys(conn, datetime.now(UTC) + timedelta(hours=25), hours=24) == 1
    engine.dispose()
    again = client.post("/v1/assignments", json=body, headers=keyed(key))
    assert "Idempotent-Replayed" not in again.headers  # a new request now
    assert count_rows(database_url, "assignments") == 2


def test_concurrent_duplicates_across_two_workers_store_once(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    clear_tables(database_url)
    with segments_server(database_url, rfm_model_dir, tmp_path, workers=2) as service:
        keys = [str(uuid.uuid4()) for _ in range(10)]

        def send(attempt: int) -> tuple[str, bytes, bool]:
            key = keys[attempt % len(keys)]
            customer: dict[str, object] = {"customer_id": f"c-{key}", "features": CHAMPION}
            route = "/v1/assignments" if attempt % 3 else "/v1/assignments/batch"
            body: dict[str, object] = customer
            if route.endswith("batch"):
                body = {"customers": [customer]}
                key = key + "-batch"
            answer = httpx2.post(
                f"{service.base}{route}", json=body, headers=keyed(key), timeout=60
            )
            assert answer.status_code == 200, answer.text
            return key, answer.content, "idempotent-replayed" in answer.headers

        # 16 at once, each key sent 12 times to each route mix: group commits and workers race
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(send, range(240)))
    answers: dict[str, set[bytes]] = {}
    firsts: dict[str, int] = {}
    for key, content, replayed in results:
        answers.setdefault(key, set()).add(content)
        firsts[key] = firsts.get(key, 0) + (0 if replayed else 1)
    assert all(len(contents) == 1 for contents in answers.values())  # one answer per key
    assert all(count == 1 for count in firsts.values())  # answered fresh exactly once
    # one stored assignment per key and route
    assert count_rows(database_url, "assignments") == len(answers)


def test_retried_events_answer_the_first_answer(database_url: str) -> None:
    """Events are safe to retry by their ids already; with a key, a retry also gets the first
    answer (not a re-read of the current segment), and concurrent duplicates of a single event
    share one fresh answer."""
    clear_tables(database_url)
    clock = ManualClock(TODAY)
    with TestClient(create_app(make_settings(database_url, DEFAULT_MODELS), clock)) as shop:
        key = str(uuid.uuid4())
        batch = {"events": [event(f"e{i}", f"c{i}", date(2011, 12, 1), 20.0) for i in range(3)]}
        first = shop.post("/v1/events", json=batch, headers=keyed(key))
        assert first.status_code == 200, first.text
        assert first.json()["events"]["stored"] == 3
        clock.advance(timedelta(days=1))
        again = shop.post("/v1/events", json=batch, headers=keyed(key))
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.content == first.content  # "stored": 3, as first answered
        other = {"events": batch["events"][:1]}
        refused = shop.post("/v1/events", json=other, headers=keyed(key))
        assert refused.status_code == 422
        assert_error(refused.json(), "idempotency_key_reused", "Idempotency-Key")

        single_key = str(uuid.uuid4())
        single = {"events": [event("s1", "s1", date(2011, 12, 2), 30.0)]}
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(
                pool.map(
                    lambda _: shop.post("/v1/events", json=single, headers=keyed(single_key)),
                    range(8),
                )
            )
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert sum("Idempotent-Replayed" not in a.headers for a in answers) == 1
    assert count_rows(database_url, "purchase_events") == 4
