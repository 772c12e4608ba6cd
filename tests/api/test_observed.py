"""Issue 13, item 3: a client may send the time its data describes (`observed_at`); an older
observation arriving late goes to the history and never replaces a newer one, and the feed gets
no spurious exited/entered pair. On a real PostgreSQL, through the HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.testclient import TestClient

from tests.api.test_assignments import CHAMPION, assert_error
from tests.conftest import count_rows

AT_RISK = {"recency_days": 300, "frequency": 1, "monetary": 40.0}


def stamp(moment: datetime) -> str:
    """As the API writes times: UTC, microseconds, Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_late_older_observation_does_not_replace_the_newer_one(
    client: TestClient, database_url: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    newer = {
        "customer_id": "c1",
        "features": AT_RISK,
        "observed_at": stamp(now - timedelta(hours=1)),
    }
    older = {
        "customer_id": "c1",
        "features": CHAMPION,
        "observed_at": stamp(now - timedelta(days=2)),
    }
    first = client.post("/v1/assignments", json=newer)
    assert first.status_code == 200, first.text
    assert first.json()["assigned_at"] == newer["observed_at"]
    late = client.post("/v1/assignments", json=older)
    assert late.status_code == 200
    # the late observation is answered for what it is, and kept in the history in its place
    assert late.json()["segment"]["key"] == "champions"
    assert late.json()["assigned_at"] == older["observed_at"]
    current = client.get("/v1/customers/c1/segment").json()
    assert current["segment"]["key"] != "champions"
    assert current["assigned_at"] == newer["observed_at"]
    history = client.get("/v1/customers/c1/assignments").json()["assignments"]
    assert [h["assigned_at"] for h in history] == [newer["observed_at"], older["observed_at"]]
    # one `entered` for the newer one; the late older one moved nobody
    assert count_rows(database_url, "membership_events") == 1
    # the same in a batch: the later observation of a customer wins, wherever it is
    batch = {
        "customers": [
            {"customer_id": "c2", "features": AT_RISK, "observed_at": stamp(now)},
            {
                "customer_id": "c2",
                "features": CHAMPION,
                "observed_at": stamp(now - timedelta(days=1)),
            },
        ]
    }
    assert client.post("/v1/assignments/batch", json=batch).status_code == 200
    assert client.get("/v1/customers/c2/segment").json()["assigned_at"] == stamp(now)


def test_observed_at_must_be_a_past_time_with_a_zone(client: TestClient, database_url: str) -> None:
    future = stamp(datetime.now(UTC) + timedelta(hours=1))
    for value, problem in (
        (future, "is in the future"),
        ("2026-11-23T09:00:00", "has no time zone"),
        ("yesterday", "must be an RFC 3339 time"),
    ):
        answer = client.post(
            "/v1/assignments",
            json={"customer_id": "c1", "features": CHAMPION, "observed_at": value},
        )
        assert answer.status_code == 422, value
        assert_error(answer.json(), "invalid_input", "observed_at")
        assert problem in answer.json()["error"]["details"][0]["problem"]
    batch = {
        "customers": [
            {"customer_id": "b0", "features": CHAMPION},
            {"customer_id": "b1", "features": CHAMPION, "observed_at": future},
        ]
    }
    refused = client.post("/v1/assignments/batch", json=batch)
    assert refused.status_code == 422
    assert_error(refused.json(), "invalid_input", "customers[1].observed_at")
    assert count_rows(database_url, "assignments") == 0
