"""The change feed: entered/exited events, keyset-paged by an opaque cursor, exactly once even
while several worker processes write concurrently."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from tests.conftest import clear_tables
from tests.servers import segments_server

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}
LAPSED = {"recency_days": 300, "frequency": 1, "monetary": 30.0}
# the personalization feed: every customer who did not object (these send no consent)
EVERYONE = {"purpose": "personalization"}


def assign(client: TestClient, customer: str, features: dict[str, float]) -> str:
    response = client.post("/v1/assignments", json={"customer_id": customer, "features": features})
    assert response.status_code == 200, response.text
    key: str = response.json()["segment"]["key"]
    return key


def test_entered_and_exited_events_and_no_event_for_the_same_segment(client: TestClient) -> None:
    first = client.get("/v1/changes", params=EVERYONE).json()
    assert first["changes"] == []
    assert first["has_more"] is False
    start = first["next_cursor"]
    # an empty page hands back a cursor that still works
    again = client.get("/v1/changes", params={"since": start} | EVERYONE).json()
    assert again["next_cursor"] == start

    top = assign(client, "c1", CHAMPION)
    assign(client, "c1", CHAMPION)  # the same segment again: no event
    low = assign(client, "c1", LAPSED)
    assert top != low
    assign(client, "c2", LAPSED)

    page = client.get("/v1/changes", params={"since": start} | EVERYONE).json()
    events = [(c["customer_id"], c["event"], c["segment"]["key"]) for c in page["changes"]]
    assert events == [
        ("c1", "entered", top),
        ("c1", "exited", top),
        ("c1", "entered", low),
        ("c2", "entered", low),
    ]
    ids = [c["id"] for c in page["changes"]]
    assert ids == sorted(ids)
    assert page["changes"][1]["model_version"] == "test-rfm-k4"
    assert page["changes"][0]["segment"]["name"]
    assert page["changes"][0]["at"].endswith("Z")

    # one segment's feed, paged one at a time
    cursor, seen = None, []
    while True:
        params = {"limit": 1} | ({"since": cursor} if cursor else {}) | EVERYONE
        page = client.get(f"/v1/segments/{low}/changes", params=params).json()
        seen += [(c["customer_id"], c["event"]) for c in page["changes"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == [("c1", "entered"), ("c2", "entered")]
    # nothing new: the same cursor comes back with no changes
    again = client.get(f"/v1/segments/{low}/changes", params={"since": cursor} | EVERYONE).json()
    assert again == {
        "purpose": "personalization",
        "changes": [],
        "next_cursor": cursor,
        "has_more": False,
    }


def test_erasure_removes_the_customers_events(client: TestClient) -> None:
    assign(client, "gone", CHAMPION)
    assign(client, "gone", LAPSED)
    assign(client, "stays", LAPSED)
    assert client.delete("/v1/customers/gone").status_code == 204
    feed = client.get("/v1/changes", params=EVERYONE).json()["changes"]
    # what is left of them: one notice that they exited, so followers drop them
    assert [
        (c["customer_id"], c["event"], c["cause"]) for c in feed if c["customer_id"] == "gone"
    ] == [("gone", "exited", "erasure")]
    assert {c["customer_id"] for c in feed} == {"gone", "stays"}


def test_ids_freed_by_an_erasure_are_never_handed_out_again(client: TestClient) -> None:
    """A consumer's cursor may have passed the newest events when they are erased: the next
    event must still come after it (ids come from a sequence, never reused)."""
    assign(client, "a", CHAMPION)
    assign(client, "b", CHAMPION)
    cursor = client.get("/v1/changes", params=EVERYONE).json()["next_cursor"]
    assert client.delete("/v1/customers/b").status_code == 204
    assign(client, "c", CHAMPION)
    after = client.get("/v1/changes", params={"since": cursor} | EVERYONE).json()["changes"]
    # b's erasure notice, then c: ids after the cursor though b's own events were deleted
    assert [(c["customer_id"], c["event"]) for c in after] == [("b", "exited"), ("c", "entered")]


def test_bad_cursor_and_unknown_segment(client: TestClient) -> None:
    # garbage, a members cursor, e1:-1, a Unicode digit, past the id column's bigint
    for cursor in ("nope", "bTE6YWJj", "ZTE6LTE", "ZTE6wrI", "ZTE6OTk5OTk5OTk5OTk5OTk5OTk5OTk"):
        response = client.get("/v1/changes", params={"since": cursor})
        assert response.status_code == 422, cursor
        assert response.json()["error"]["details"][0]["loc"] == "since"
    missing = client.get("/v1/segments/nope/changes")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "segment_not_found"


@pytest.mark.slow
def test_a_poller_sees_every_change_exactly_once_during_concurrent_writes(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    clear_tables(database_url)
    customers = [f"f{i:03d}" for i in range(60)]

    async def scenario(base: str) -> list[dict[str, object]]:
        stop = asyncio.Event()

        async def writer(worker: int) -> None:
            async with httpx2.AsyncClient(base_url=base, timeout=30) as client:
                turn = 0
                while not stop.is_set():
                    turn += 1
                    features = CHAMPION if (turn + worker) % 2 else LAPSED
                    # consent comes and goes too: the advertising feed follows it
                    consent = {"advertising": (turn // 2 + worker) % 3 != 0}
                    body: dict[str, object]
                    if turn % 3 == 0:
                        chosen = customers[worker::6]
                        body = {
                            "customers": [
                                {"customer_id": c, "features": features, "consent": consent}
                                for c in chosen
                            ]
                        }
                        response = await client.post("/v1/assignments/batch", json=body)
                    else:
                        customer = customers[(turn * 7 + worker) % len(customers)]
                        body = {"customer_id": customer, "features": features, "consent": consent}
                        response = await client.post("/v1/assignments", json=body)
                    assert response.status_code == 200, response.text

        seen: list[dict[str, object]] = []
        cursor: str | None = None

        async def poll(client: httpx2.AsyncClient) -> bool:
            nonlocal cursor
            params: dict[str, str | int] = {"limit": 50, "purpose": "advertising"}
            if cursor is not None:
                params["since"] = cursor
            page = (await client.get("/v1/changes", params=params)).json()
            seen.extend(page["changes"])
            cursor = page["next_cursor"]
            return bool(page["has_more"])

        writers = [asyncio.create_task(writer(w)) for w in range(6)]
        async with httpx2.AsyncClient(base_url=base, timeout=30) as reader:
            for _ in range(150):  # poll while the writers write
                await poll(reader)
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*writers)
            while await poll(reader):  # drain what is left
                pass
            await poll(reader)
        return seen

    with segments_server(database_url, rfm_model_dir, tmp_path, workers=2) as service:
        seen = asyncio.run(scenario(service.base))

    engine = create_engine(database_url)
    with engine.connect() as conn:
        stored = [
            row[0]
            for row in conn.execute(
                text("SELECT id FROM membership_events WHERE advertising ORDER BY id")
            )
        ]
        # the advertising audience: customers whose last word on advertising was yes
        members: dict[str, str] = {
            row[0]: row[1]
            for row in conn.execute(
                text("SELECT customer_id, segment_key FROM memberships WHERE consent_advertising")
            )
        }
        consent_events = conn.execute(
            text("SELECT count(*) FROM membership_events WHERE cause = 'consent'")
        ).scalar_one()
    engine.dispose()
    ids = [c["id"] for c in seen]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert ids == stored, f"missed {len(set(stored) - set(ids))} of {len(stored)} events"
    assert len(ids) > 200, f"too few changes to mean anything: {len(ids)}"
    assert consent_events > 20, f"too few consent changes to mean anything: {consent_events}"
    # replaying the advertising feed gives every consenting customer's current segment
    replayed: dict[str, str] = {}
    for change in seen:
        key = change["segment"]["key"]  # type: ignore[index]
        customer = str(change["customer_id"])
        if change["event"] == "entered":
            assert customer not in replayed, f"{customer} entered twice without exiting"
            replayed[customer] = key
        else:
            assert replayed.pop(customer) == key, f"{customer} exited a segment it was not in"
    assert replayed == members
