"""A streamed export whose database connection dies mid-way still gives back its export slot."""

from __future__ import annotations

import asyncio

from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from app.api.exports import stream_audience
from app.audience.consent import Purpose
from app.audience.formats import ExportFormat, Identifiers

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}


def test_a_broken_export_frees_its_slot(client: TestClient, database_url: str) -> None:
    body = {"customers": [{"customer_id": f"c{i:05d}", "features": CHAMPION} for i in range(3000)]}
    assert client.post("/v1/assignments/batch", json=body).status_code == 200
    service = client.app_state["runtime"].audiences
    admin = create_engine(database_url)

    async def export_and_kill_its_session() -> str:
        response = await stream_audience(
            service, "champions", Purpose.PERSONALIZATION, ExportFormat.CSV, Identifiers.NONE
        )
        chunks = aiter(response.body_iterator)
        await anext(chunks)  # the header
        await anext(chunks)  # the first rows: the snapshot is open, idle between fetches
        assert service.open_exports == 1
        # what PostgreSQL's idle_in_transaction_session_timeout does to a paused reader
        with admin.begin() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND state LIKE 'idle in transaction%'"
                )
            )
        try:
            async for _ in chunks:
                pass
        except Exception as exc:  # the stream breaks off; what matters is what it leaves
            return type(exc).__name__
        return "finished"

    outcome = asyncio.run(export_and_kill_its_session())
    admin.dispose()
    assert outcome != "finished"
    assert service.open_exports == 0
    # and the next export runs (a leaked slot would make it a 429 until a restart)
    again = client.get("/v1/segments/champions/members", params={"format": "csv"})
    assert again.status_code == 200, again.text[:300]
    assert len(again.text.splitlines()) == 3001
