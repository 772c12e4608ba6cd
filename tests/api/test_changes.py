"""The change feed: entered/exited events, keyset-paged by an opaque cursor, exactly once even
while several worker processes write concurrently."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from app.service.cursors import MOST_RUNNING, decode_feed_cursor, feed_cursor
from app.store.assignments import AssignmentBatch, AssignmentRow, store_batch
from app.store.audiences import LAST_EVENT_ID, FeedPosition
from app.store.customer_locks import FEW, customer_key
from tests.conftest import TEST_ID_HASH, clear_tables
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


def _scored_segment(client: TestClient, customer: str, features: dict[str, float]) -> Any:
    """The segment the service puts the customer in (scored only, nothing stored)."""
    answer = client.post(
        "/v1/assignments",
        params={"persist": "false"},
        json={"customer_id": customer, "features": features},
    )
    return answer.json()["segment"]


def _two_writers(client: TestClient) -> tuple[str, str, AssignmentRow]:
    """Two customers whose locks differ: the slow one's assignment (a champion, as the service
    scores it) to hold in an open transaction, and the quick one's id."""
    slow = "slow-writer"
    quick = next(
        c for c in (f"quick-{i}" for i in range(99)) if customer_key(c) != customer_key(slow)
    )
    segment = _scored_segment(client, slow, CHAMPION)
    held = AssignmentRow(
        slow, segment["id"], segment["key"], "test-rfm-k4", 0.1, 0.9, CHAMPION, datetime.now(UTC)
    )
    return slow, quick, held


def test_other_customers_writes_do_not_wait_and_the_feed_waits_for_older_transactions(
    client: TestClient, database_url: str
) -> None:
    """A write stays open (its transaction began before another customer's write commits): the
    other write does not wait for it (no lock but the customers' own), and the feed holds the
    newer event back until the older transaction ends, whose event may come first in the feed.
    A reader paging by commit alone would have passed the older event's position and lost it."""
    slow, quick, held = _two_writers(client)
    cursor = client.get("/v1/changes", params=EVERYONE).json()["next_cursor"]
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn, conn.begin():
            store_batch(conn, AssignmentBatch.of_rows([held]), TEST_ID_HASH)
            assign(client, quick, CHAMPION)  # answered (stored) while the slow one is open
            page = client.get("/v1/changes", params={"since": cursor} | EVERYONE).json()
            assert page["changes"] == [], "an event was handed out past an open transaction's"
            cursor = page["next_cursor"]
        page = client.get("/v1/changes", params={"since": cursor} | EVERYONE).json()
    finally:
        engine.dispose()
    assert [(c["customer_id"], c["event"]) for c in page["changes"]] == [
        (slow, "entered"),
        (quick, "entered"),
    ]


def test_the_last_write_of_a_quiet_database_is_handed_out(
    client: TestClient, database_url: str
) -> None:
    """A write waits for its customer's lock while other writes end, then ends last, and
    nothing is written after it: its events are handed out all the same (stamped from the
    snapshot's xmax itself, they waited for the next write anywhere)."""
    slow, quick, held = _two_writers(client)
    lapsed = _scored_segment(client, slow, LAPSED)
    moved = replace(
        held, segment_id=lapsed["id"], segment_key=lapsed["key"], assigned_at=datetime.now(UTC)
    )
    cursor = client.get("/v1/changes", params=EVERYONE).json()["next_cursor"]
    engine = create_engine(database_url)

    def write(row: AssignmentRow) -> None:
        with engine.begin() as conn:
            store_batch(conn, AssignmentBatch.of_rows([row]), TEST_ID_HASH)

    try:
        with engine.connect() as conn, conn.begin():
            store_batch(conn, AssignmentBatch.of_rows([held]), TEST_ID_HASH)
            waiting = threading.Thread(target=write, args=(moved,))  # waits for slow's lock
            waiting.start()
            time.sleep(0.3)
            for other in (quick, f"{quick}-2"):  # other writes end meanwhile
                write(replace(held, customer_id=other))
        waiting.join(timeout=10)
        page = client.get("/v1/changes", params={"since": cursor} | EVERYONE).json()
    finally:
        engine.dispose()
    assert [(c["customer_id"], c["event"], c["segment"]["key"]) for c in page["changes"]][-2:] == [
        (slow, "exited", held.segment_key),
        (slow, "entered", lapsed["key"]),
    ]


def test_an_exports_position_is_exact_while_an_older_transaction_is_open(
    client: TestClient, database_url: str
) -> None:
    """The export's snapshot sees a change committed after an older transaction began, but not
    that transaction's: following the feed from its position gives exactly the latter."""
    slow, quick, held = _two_writers(client)
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn, conn.begin():
            store_batch(conn, AssignmentBatch.of_rows([held]), TEST_ID_HASH)
            assign(client, quick, CHAMPION)
            export = client.get(
                f"/v1/segments/{held.segment_key}/members",
                params=EVERYONE,
                headers={"accept": "application/x-ndjson"},
            )
            assert [line for line in export.text.splitlines() if quick in line]
            assert not [line for line in export.text.splitlines() if slow in line]
            position = export.headers["segments-feed-cursor"]
        after = client.get("/v1/changes", params={"since": position} | EVERYONE).json()
    finally:
        engine.dispose()
    assert [(c["customer_id"], c["event"]) for c in after["changes"]] == [(slow, "entered")]
    # once the feed has moved past every event the snapshot could have seen, the cursor no
    # longer carries it
    assign(client, "later", CHAMPION)
    later = client.get("/v1/changes", params={"since": after["next_cursor"]} | EVERYONE).json()
    assert [c["customer_id"] for c in later["changes"]] == ["later"]
    assert decode_feed_cursor(later["next_cursor"]).snapshot is None


def test_an_exports_position_naming_many_running_transactions_fits_the_parameter(
    client: TestClient,
) -> None:
    """The most running transactions a cursor names, with ids of ten digits, still fit ?since."""
    first = 4_000_000_000
    running = ",".join(str(first + i) for i in range(MOST_RUNNING))
    snapshot = f"{first}:{first + MOST_RUNNING}:{running}"
    position = feed_cursor(FeedPosition(first - 1, LAST_EVENT_ID, snapshot))
    assert decode_feed_cursor(position).snapshot == snapshot
    answer = client.get("/v1/changes", params={"since": position} | EVERYONE)
    assert answer.status_code == 200, answer.text
    # one more and the position goes without its snapshot (see app.service.cursors)
    more = f"{first}:{first + MOST_RUNNING + 1}:{running},{first + MOST_RUNNING}"
    assert decode_feed_cursor(feed_cursor(FeedPosition(1, 2, more))).snapshot is None


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
    with segments_server(database_url, rfm_model_dir, tmp_path, workers=2) as service:
        seen = asyncio.run(_poll_while_writing([service.base], database_url))
    _check_exactly_once(database_url, seen)


@pytest.mark.slow
def test_two_replicas_writing_while_a_reader_polls(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    """Two separate `segments serve` processes on one database (as two pods), each written to
    by half the writers, with no lock between them but their customers': the feed still hands
    out every event once, each customer's in the order they happened."""
    clear_tables(database_url)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        segments_server(database_url, rfm_model_dir, tmp_path / "a", workers=1) as first,
        segments_server(database_url, rfm_model_dir, tmp_path / "b", workers=1) as second,
    ):
        seen = asyncio.run(_poll_while_writing([first.base, second.base], database_url))
    _check_exactly_once(database_url, seen)


CUSTOMERS = [f"f{i:03d}" for i in range(60)]
CROWD = [f"crowd-{i:03d}" for i in range(FEW + 10)]


async def _poll_while_writing(bases: list[str], database_url: str) -> list[dict[str, object]]:
    """Six writers (spread over the servers) move 60 customers between segments and consent,
    singly and in batches (one writer's with a crowd of others, so that it locks the whole
    fleet while the others lock customer by customer), while a reader polls the advertising
    feed of the first server."""
    stop = asyncio.Event()

    async def writer(worker: int) -> None:
        base = bases[worker % len(bases)]
        async with httpx2.AsyncClient(base_url=base, timeout=30) as client:
            turn = 0
            while not stop.is_set():
                turn += 1
                features = CHAMPION if (turn + worker) % 2 else LAPSED
                # consent comes and goes too: the advertising feed follows it
                consent = {"advertising": (turn // 2 + worker) % 3 != 0}
                body: dict[str, object]
                if turn % 3 == 0:
                    chosen = CUSTOMERS[worker::6]
                    if worker == 0:  # more than FEW: this batch takes the fleet lock
                        chosen = chosen + CROWD
                    body = {
                        "customers": [
                            {"customer_id": c, "features": features, "consent": consent}
                            for c in chosen
                        ]
                    }
                    response = await client.post("/v1/assignments/batch", json=body)
                else:
                    customer = CUSTOMERS[(turn * 7 + worker) % len(CUSTOMERS)]
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
    async with httpx2.AsyncClient(base_url=bases[0], timeout=30) as reader:
        for _ in range(150):  # poll while the writers write
            await poll(reader)
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*writers)
        # drain what is left: every committed event is handed out once no older transaction
        # runs, and a background one (autovacuum's analyze) may hold the feed back a moment;
        # a missed event never comes (the cursor is past it), and the deadline fails the test
        deadline = time.monotonic() + 20
        while True:
            while await poll(reader):
                pass
            if len(seen) >= _advertising_events(database_url) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        await poll(reader)
    return seen


def _advertising_events(database_url: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM membership_events WHERE advertising"))
        stored = int(count.scalar_one())
    engine.dispose()
    return stored


def _check_exactly_once(database_url: str, seen: list[dict[str, object]]) -> None:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        stored = [
            row[0]
            for row in conn.execute(
                text("SELECT id FROM membership_events WHERE advertising ORDER BY stamp, id")
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
