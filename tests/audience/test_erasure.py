"""Erasure over the real app and database: everything goes, a tombstone keeps the customer from
coming back (even through a replayed batch racing the erasure), audit rows name the key, an
admin can restore, and up to 10,000 ids go in one call."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import Connection, create_engine, text
from starlette.testclient import TestClient

from app.auth.keys import Scope, generate_key, key_config_line
from app.main import create_app
from app.store import erasure as erasure_store
from app.store.customer_locks import FEW, lock_customers
from tests.conftest import TEST_ID_HASH, clear_tables, count_rows, make_settings, metric_value
from tests.servers import segments_server

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}
LAPSED = {"recency_days": 300, "frequency": 1, "monetary": 30.0}
DPO_KEY = generate_key()
WRITER_KEY = generate_key()
ADMIN_KEYS = "\n".join(
    [
        key_config_line("dpo", DPO_KEY, [Scope.ADMIN, Scope.AUDIENCE, Scope.READ]),
        key_config_line("shop", WRITER_KEY, [Scope.ASSIGN]),
    ]
)


@contextlib.contextmanager
def dpo_client(database_url: str, rfm_model_dir: Path, **settings: object) -> Iterator[TestClient]:
    """The app over empty tables with two keys, `dpo` (admin, audience, read) and `shop`
    (assign), calling as `dpo`."""
    clear_tables(database_url)
    app = create_app(
        make_settings(
            database_url, rfm_model_dir, api_keys=ADMIN_KEYS, allow_anonymous=False, **settings
        )
    )
    with TestClient(app) as client:
        client.headers["authorization"] = f"Bearer {DPO_KEY}"
        yield client


@pytest.fixture
def admin(database_url: str, rfm_model_dir: Path) -> Iterator[TestClient]:
    with dpo_client(database_url, rfm_model_dir) as client:
        yield client


def write(client: TestClient, *customers: str, features: dict[str, float] = CHAMPION) -> None:
    body = {
        "customers": [
            {
                "customer_id": c,
                "features": features,
                "email": f"{c}@example.com",
                "consent": {"advertising": True},
            }
            for c in customers
        ]
    }
    headers = {"authorization": f"Bearer {WRITER_KEY}"}
    response = client.post("/v1/assignments/batch", json=body, headers=headers)
    assert response.status_code == 200, response.text


def everywhere(client: TestClient, customer: str) -> list[str]:
    """Where the customer shows: lookups, pages, streams and both feeds (but for the erasure
    notice, which tells a feed's followers to drop them: see `erasure_notices`)."""
    places = []
    if client.get(f"/v1/customers/{customer}/segment").status_code != 404:
        places.append("lookup")
    if client.get(f"/v1/customers/{customer}/assignments").status_code != 404:
        places.append("history")
    for purpose in ("advertising", "personalization"):
        params = {"purpose": purpose}
        if (
            customer
            in client.get("/v1/segments/champions/members", params=params).json()["members"]
        ):
            places.append(f"members {purpose}")
        streamed = client.get("/v1/segments/champions/members", params=params | {"format": "csv"})
        if customer in streamed.text:
            places.append(f"export {purpose}")
        changes = client.get("/v1/changes", params=params | {"limit": 10_000}).json()["changes"]
        if any(c["customer_id"] == customer and c["cause"] != "erasure" for c in changes):
            places.append(f"feed {purpose}")
    return places


def erasure_notices(client: TestClient, customer: str) -> dict[str, list[tuple[str, str]]]:
    """Each feed's erasure notices for the customer, as (event, segment)."""
    notices = {}
    for purpose in ("advertising", "personalization"):
        params = {"purpose": purpose, "limit": 10_000}
        changes = client.get("/v1/changes", params=params).json()["changes"]
        notices[purpose] = [
            (c["event"], c["segment"]["key"])
            for c in changes
            if c["customer_id"] == customer and c["cause"] == "erasure"
        ]
    return notices


def test_erasure_deletes_everything_and_the_tombstone_keeps_them_out(
    admin: TestClient, database_url: str
) -> None:
    write(admin, "gone", "stays")
    write(admin, "gone", features=LAPSED)
    assert everywhere(admin, "gone")  # shows up before

    assert admin.delete("/v1/customers/gone").status_code == 204
    assert everywhere(admin, "gone") == []
    assert everywhere(admin, "stays") != []
    # the feeds' last word on them: exited, so a platform following a feed drops them
    lapsed = erasure_notices(admin, "gone")["advertising"][0][1]
    assert erasure_notices(admin, "gone") == {
        "advertising": [("exited", lapsed)],
        "personalization": [("exited", lapsed)],
    }
    assert lapsed != "champions"  # their last segment

    # a replayed old batch is scored (200, an answer) but not stored
    write(admin, "gone", "stays")
    assert everywhere(admin, "gone") == []
    metrics = admin.get("/metrics").text
    assert metric_value(metrics, "segment_assignments_suppressed_total") >= 1
    single = admin.post(
        "/v1/assignments",
        json={"customer_id": "gone", "features": CHAMPION},
        headers={"authorization": f"Bearer {WRITER_KEY}"},
    )
    assert single.status_code == 200
    assert single.json()["segment"]["key"] == "champions"
    assert everywhere(admin, "gone") == []

    # the tombstone names the customer by a keyed hash, not the id or its plain hash
    engine = create_engine(database_url)
    with engine.connect() as conn:
        tombstones = list(conn.execute(text("SELECT id_hash FROM erasure_tombstones")).scalars())
    engine.dispose()
    assert tombstones == [TEST_ID_HASH("gone")]
    assert hashlib.sha256(b"gone").hexdigest() not in tombstones

    trail = admin.get("/v1/customers/gone/erasures").json()
    assert trail["erased"] is True
    (entry,) = trail["audit"]
    assert entry["action"] == "erased"
    assert entry["api_key"] == "dpo"
    assert entry["assignments"] == 2
    assert entry["memberships"] == 1
    assert entry["events"] == 3  # entered, exited, entered (advertising and personalization)

    # erasing again: nothing left, the tombstone stood already
    again = admin.delete("/v1/customers/gone")
    assert again.status_code == 404
    assert "already stood" in again.json()["error"]["message"]


def test_restore_lifts_the_tombstone_and_only_new_assignments_come_back(
    admin: TestClient,
) -> None:
    write(admin, "back")
    assert admin.delete("/v1/customers/back").status_code == 204
    missing = admin.post("/v1/customers/never/restore")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_erased"

    assert admin.post("/v1/customers/back/restore").status_code == 204
    assert everywhere(admin, "back") == []  # nothing erased comes back
    write(admin, "back")
    assert "lookup" in everywhere(admin, "back")
    history = admin.get("/v1/customers/back/assignments").json()["assignments"]
    assert len(history) == 1
    trail = admin.get("/v1/customers/back/erasures").json()
    assert [a["action"] for a in trail["audit"]] == ["erased", "restored"]
    assert trail["erased"] is False


def test_unknown_ids_are_tombstoned_too(admin: TestClient) -> None:
    response = admin.delete("/v1/customers/not-yet-seen")
    assert response.status_code == 404  # the contract: nothing was stored
    assert "tombstone now stands" in response.json()["error"]["message"]
    write(admin, "not-yet-seen")
    assert everywhere(admin, "not-yet-seen") == []


def test_bulk_erasure_of_ten_thousand_ids(admin: TestClient, database_url: str) -> None:
    stored = [f"b{i:05d}" for i in range(3000)]
    for start in range(0, len(stored), 1000):
        write(admin, *stored[start : start + 1000])
    write(admin, "kept")
    requested = stored + [f"never-{i}" for i in range(7000)]

    too_many = admin.post("/v1/erasures", json={"customer_ids": [*requested, "one-more"]})
    assert too_many.status_code == 422
    assert too_many.json()["error"]["details"][0]["loc"] == "customer_ids"
    bad = admin.post("/v1/erasures", json={"customer_ids": ["ok", "a/b", ""]})
    assert bad.status_code == 422
    assert [d["loc"] for d in bad.json()["error"]["details"]] == [
        "customer_ids[1]",
        "customer_ids[2]",
    ]
    assert count_rows(database_url, "erasure_tombstones") == 0  # a rejected call erases nothing

    response = admin.post("/v1/erasures", json={"customer_ids": requested})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["erased"] == 3000
    assert body["tombstoned"] == 10_000
    assert body["customers"][0] == {
        "customer_id": "b00000",
        "found": True,
        "already_erased": False,
        "assignments": 1,
        "memberships": 1,
        "events": 1,
        "purchase_events": 0,
    }
    assert body["customers"][-1]["found"] is False
    assert count_rows(database_url, "memberships") == 1  # only "kept"
    assert count_rows(database_url, "erasure_tombstones") == 10_000
    assert count_rows(database_url, "erasure_audit") == 10_000
    members = admin.get("/v1/segments/champions/members").json()["members"]
    assert members == ["kept"]

    forbidden = admin.post(
        "/v1/erasures",
        json={"customer_ids": ["kept"]},
        headers={"authorization": f"Bearer {WRITER_KEY}"},
    )
    assert forbidden.status_code == 403


@pytest.mark.slow
@pytest.mark.parametrize("count", [20, FEW + 10], ids=["customer-locks", "fleet-lock"])
def test_a_batch_racing_the_erasure_cannot_bring_the_customer_back(
    database_url: str, rfm_model_dir: Path, tmp_path: Path, count: int
) -> None:
    """Writers replay batches naming the customer on two worker processes while the erasure
    commits: whatever the interleaving, nothing of theirs is stored afterwards. With a few
    customers, everyone locks them one by one; with more than FEW, the whole fleet."""
    clear_tables(database_url)
    victims = [f"v{i}" for i in range(count)]

    async def scenario(base: str) -> int:
        erased = asyncio.Event()
        after_erasure = 0

        async def writer(worker: int) -> None:
            nonlocal after_erasure
            async with httpx2.AsyncClient(base_url=base, timeout=30) as client:
                for turn in range(60):
                    body = {
                        "customers": [
                            {"customer_id": c, "features": CHAMPION if turn % 2 else LAPSED}
                            for c in [*victims, f"other-{worker}"]
                        ]
                    }
                    response = await client.post("/v1/assignments/batch", json=body)
                    assert response.status_code == 200, response.text
                    if erased.is_set():
                        after_erasure += 1

        async def eraser() -> None:
            async with httpx2.AsyncClient(base_url=base, timeout=30) as client:
                await asyncio.sleep(0.3)
                response = await client.post("/v1/erasures", json={"customer_ids": victims})
                assert response.status_code == 200, response.text
                erased.set()

        await asyncio.gather(*(writer(w) for w in range(4)), eraser())
        return after_erasure

    with segments_server(database_url, rfm_model_dir, tmp_path, workers=2) as service:
        after_erasure = asyncio.run(scenario(service.base))

    assert after_erasure > 10, "the writers finished before the erasure: no race was tested"
    engine = create_engine(database_url)
    with engine.connect() as conn:
        for table in ("assignments", "memberships", "membership_events"):
            left = conn.execute(
                text(
                    f"SELECT count(*) FROM {table} WHERE customer_id LIKE 'v%'"
                    + (" AND cause <> 'erasure'" if table == "membership_events" else "")
                )
            ).scalar_one()
            assert left == 0, f"{left} rows of erased customers in {table}"
        others = conn.execute(text("SELECT count(*) FROM memberships")).scalar_one()
    engine.dispose()
    assert others == 4


def test_two_erasures_of_one_customer_at_once_both_succeed(
    admin: TestClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried GDPR request can erase an id while the first is still running: the membership
    customer's lock serialises them (each waits at the barrier for the other, which cannot come
    until the first commits, so the barrier times out), and the second finds the tombstone
    standing."""
    write(admin, "twice")
    service = admin.app_state["runtime"].erasure
    both_checked = threading.Barrier(2)
    locked = lock_customers

    def lock_then_meet(conn: Connection, customer_ids: Sequence[str]) -> None:
        locked(conn, customer_ids)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checked.wait(timeout=2)

    monkeypatch.setattr(erasure_store, "lock_customers", lock_then_meet)
    outcomes: list[str] = []

    def erase() -> None:
        try:
            service.erase(["twice"], "dpo")
            outcomes.append("ok")
        except Exception as exc:  # what the test is about: none may fail
            outcomes.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=erase) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["ok", "ok"]
    assert count_rows(database_url, "erasure_tombstones") == 1
    assert admin.get("/v1/customers/twice/erasures").json()["erased"] is True


def test_erasure_notices_expire_and_can_be_turned_off(
    database_url: str, rfm_model_dir: Path
) -> None:
    """Notices are deleted `erasure_notice_days` after the erasure (by the next erasure, or the
    timer), and with 0 an erasure leaves no trace of the id in the feeds at all."""
    for days, expected in ((1, 1), (0, 0)):
        with dpo_client(database_url, rfm_model_dir, erasure_notice_days=days) as client:
            write(client, "first", "second")
            assert client.delete("/v1/customers/first").status_code == 204
            assert len(erasure_notices(client, "first")["personalization"]) == expected
            if days:
                engine = create_engine(database_url)
                with engine.begin() as conn:  # the notice is two days old now
                    conn.execute(
                        text(
                            "UPDATE membership_events SET occurred_at = :then "
                            "WHERE cause = 'erasure'"
                        ),
                        {"then": datetime.now(UTC) - timedelta(days=2)},
                    )
                engine.dispose()
                assert client.delete("/v1/customers/second").status_code == 204
                assert erasure_notices(client, "first")["personalization"] == []
                assert len(erasure_notices(client, "second")["personalization"]) == 1


def test_expired_erasure_notices_go_without_another_erasure(
    database_url: str, rfm_model_dir: Path
) -> None:
    """A quiet month has no next erasure: each worker's timer deletes expired notices itself."""
    with dpo_client(
        database_url, rfm_model_dir, erasure_notice_days=1, erasure_prune_seconds=0.2
    ) as client:
        write(client, "first", "second")
        assert client.delete("/v1/customers/first").status_code == 204
        assert client.delete("/v1/customers/second").status_code == 204
        engine = create_engine(database_url)
        with engine.begin() as conn:  # first's notice is two days old now, second's is fresh
            conn.execute(
                text(
                    "UPDATE membership_events SET occurred_at = :then "
                    "WHERE cause = 'erasure' AND customer_id = 'first'"
                ),
                {"then": datetime.now(UTC) - timedelta(days=2)},
            )
        engine.dispose()
        deadline = time.monotonic() + 10
        while erasure_notices(client, "first")["personalization"]:
            assert time.monotonic() < deadline, "the expired notice was never pruned"
            time.sleep(0.1)
        assert len(erasure_notices(client, "second")["personalization"]) == 1
