"""Two worker processes ingesting the same customers at once, with retries crossing each other:
every event counts exactly once, and each customer's segment comes from all of them."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import create_engine, text

from app.training.rfm import exact_amount, rfm_features
from tests.conftest import clear_tables
from tests.servers import segments_server

pytestmark = pytest.mark.slow
CUSTOMERS = [f"busy-{i}" for i in range(4)]


def _events() -> list[dict[str, object]]:
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(days=200)
    events = []
    for i in range(400):
        customer = CUSTOMERS[i % len(CUSTOMERS)]
        moment = start + timedelta(days=rng.randint(0, 190), minutes=i)
        events.append(
            {
                "event_id": f"ev-{i}",
                "customer_id": customer,
                "occurred_at": moment.isoformat(),
                "amount": round(rng.uniform(1, 90), 2),
                "type": "order",
                "order_id": f"{customer}-order-{i // 12}",  # lines of an order spread out
            }
        )
    return events


def test_concurrent_ingestion_on_two_workers_counts_each_event_once(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    clear_tables(database_url)
    events = _events()
    # eight clients; every event is sent by two of them (a retry racing the original)
    sends = [(client, e) for e in events for client in random.Random(1).sample(range(8), 2)]
    random.Random(2).shuffle(sends)

    async def client(base: str, mine: list[dict[str, object]]) -> None:
        async with httpx2.AsyncClient(base_url=base, timeout=60) as http:
            position = 0
            while position < len(mine):
                size = 1 + position % 3  # single events (group commit) and small batches
                chunk, position = mine[position : position + size], position + size
                response = await http.post("/v1/events", json={"events": chunk})
                assert response.status_code == 200, response.text

    async def scenario(base: str) -> None:
        per_client: dict[int, list[dict[str, object]]] = defaultdict(list)
        for number, sent in sends:
            per_client[number].append(sent)
        await asyncio.gather(*(client(base, batch) for batch in per_client.values()))

    with segments_server(database_url, rfm_model_dir, tmp_path, workers=2) as service:
        asyncio.run(scenario(service.base))

    engine = create_engine(database_url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM purchase_events")).scalar_one()
        activity = {
            row.customer_id: row
            for row in conn.execute(text("SELECT * FROM customer_activity")).all()
        }
        latest: dict[str, dict[str, float]] = dict(
            conn.execute(
                text(
                    "SELECT DISTINCT ON (customer_id) customer_id, features FROM assignments "
                    "ORDER BY customer_id, assigned_at DESC, id DESC"
                )
            ).all()
        )
        members = conn.execute(text("SELECT count(*) FROM memberships")).scalar_one()
    engine.dispose()
    assert stored == len(events)
    assert members == len(CUSTOMERS)
    for customer in CUSTOMERS:
        theirs = [e for e in events if e["customer_id"] == customer]
        row = activity[customer]
        assert row.orders == len({e["order_id"] for e in theirs})
        assert row.spend == sum((exact_amount(float(e["amount"])) for e in theirs), Decimal(0))  # type: ignore[arg-type]
        assert row.last_purchase_at == max(
            datetime.fromisoformat(str(e["occurred_at"])) for e in theirs
        )
        # the segment stored last was scored from all of them (as of the day it was scored)
        features = latest[customer]
        assert features["frequency"] == row.orders
        assert (
            features["monetary"]
            == rfm_features(
                row.last_purchase_at.date(), row.orders, row.spend, datetime.now(UTC).date()
            )[2]
        )
