"""The real thing: `segments serve` as uvicorn worker processes, over TCP, with metrics summed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import clear_tables, count_rows, metric_value
from tests.servers import segments_server

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}


@pytest.fixture
def two_workers(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    clear_tables(database_url)
    with segments_server(database_url, rfm_model_dir, tmp_path) as service:
        yield service.base, service.metrics_dir


def test_two_workers_serve_and_their_metrics_add_up(
    two_workers: tuple[str, Path], database_url: str
) -> None:
    base, metrics_dir = two_workers
    assert not (metrics_dir / "counter_999999.db").exists()
    singles = 120
    for i in range(singles // 2):
        # a fresh connection each time, so the kernel spreads requests over both workers
        response = httpx2.post(
            f"{base}/v1/assignments",
            json={"customer_id": f"w{i}", "features": CHAMPION},
            headers={"connection": "close"},
        )
        assert response.status_code == 200

    async def concurrent() -> list[int]:
        async with httpx2.AsyncClient(base_url=base) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/v1/assignments", json={"customer_id": f"w{i}", "features": CHAMPION}
                    )
                    for i in range(singles // 2, singles)
                )
            )
        return [r.status_code for r in responses]

    assert asyncio.run(concurrent()) == [200] * (singles // 2)
    batch = [{"customer_id": f"b{i}", "features": CHAMPION} for i in range(80)]
    assert httpx2.post(f"{base}/v1/assignments/batch", json={"customers": batch}).status_code == 200
    assert count_rows(database_url, "assignments") == singles + 80

    worker_files = {p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}
    assert len(worker_files) >= 2, f"one worker took all requests: {worker_files}"

    for _ in range(6):  # whichever worker answers the scrape, the totals are everyone's
        text = httpx2.get(f"{base}/metrics", headers={"connection": "close"}).text
        assert metric_value(text, "segment_assignments_total", segment="champions") == singles + 80
        assert (
            metric_value(
                text,
                "segment_request_duration_seconds_count",
                route="/v1/assignments",
                method="POST",
                status="200",
            )
            == singles
        )
        assert (
            metric_value(text, "segment_inference_duration_seconds_count", mode="single") == singles
        )
        assert metric_value(text, "segment_drift_samples") == singles + 80
        assert "segment_model_info{" in text
