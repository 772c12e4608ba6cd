"""Bodies built to exhaust memory get a small 422 and cost a bounded amount: at most 100
problems are listed (the rest counted), no location echoes more than 200 characters of what the
caller wrote, and the worker's peak memory stays bounded (measured on a real server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import orjson
from starlette.testclient import TestClient

from app.errors import MAX_PROBLEMS
from tests.servers import segments_server

CHAMPION = {"recency_days": 3, "frequency": 7, "monetary": 4310.0}


def many_unknown_fields(rows: int = 10_000, fields: int = 100) -> bytes:
    """~10 MB (under the 16 MB body limit): every row with a hundred fields the model does not
    take."""
    extra = {f"u{j:02d}": j for j in range(fields)}
    return orjson.dumps(
        {"customers": [{"customer_id": f"c{i}", "features": CHAMPION | extra} for i in range(rows)]}
    )


def check_bounded(answer: Any, expected_more: int) -> None:
    """A 422 listing MAX_PROBLEMS problems, then one counting the rest (an httpx2 or a Starlette
    test client's response)."""
    assert answer.status_code == 422
    assert len(answer.content) < 40_000
    details = answer.json()["error"]["details"]
    assert len(details) == MAX_PROBLEMS + 1
    assert details[-1]["loc"] == "body"
    assert f"and {expected_more:,} more problems not listed" in details[-1]["problem"]


def test_a_batch_of_a_million_problems_is_a_small_answer(client: TestClient) -> None:
    body = many_unknown_fields()
    assert len(body) > 8_000_000
    answer = client.post(
        "/v1/assignments/batch", content=body, headers={"content-type": "application/json"}
    )
    check_bounded(answer, 10_000 * 100 - MAX_PROBLEMS)
    assert "or more of the batch's 10000 customers" in answer.json()["error"]["message"]


def test_one_customer_with_900000_unknown_features_is_a_small_answer(client: TestClient) -> None:
    features = CHAMPION | {f"f{i}": 1 for i in range(900_000)}
    answer = client.post("/v1/assignments", json={"customer_id": "c1", "features": features})
    check_bounded(answer, 900_000 - MAX_PROBLEMS)


def test_a_huge_field_name_is_not_echoed(client: TestClient) -> None:
    name = "x" * 1_000_000
    answer = client.post(
        "/v1/assignments", json={"customer_id": "c1", "features": CHAMPION | {name: 1}}
    )
    assert answer.status_code == 422
    assert len(answer.content) < 2_000
    events = client.post("/v1/events", json={"events": [{name[:10_000]: 1}] * 500})
    assert events.status_code == 422
    assert len(events.content) < 60_000


def test_the_worst_bodies_leave_a_workers_memory_bounded(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    """Peak RSS of one worker after the worst bodies: their size plus parsing, not the answer's
    (an unbounded answer listed a million problems: 130 MB, and the worker grew by ~600 MB)."""
    body = many_unknown_fields()
    with (
        segments_server(database_url, rfm_model_dir, tmp_path, workers=1) as service,
        httpx2.Client(timeout=60) as http,
    ):
        http.post(f"{service.base}/v1/assignments", json={"customer_id": "w", "features": CHAMPION})
        before = _peak_rss_mb(service.pid)
        for _ in range(3):
            answer = http.post(
                f"{service.base}/v1/assignments/batch",
                content=body,
                headers={"content-type": "application/json"},
            )
            check_bounded(answer, 10_000 * 100 - MAX_PROBLEMS)
        grown = _peak_rss_mb(service.pid) - before
    # the body is 10.8 MB; orjson's parse of it is ~100 MB of Python objects at most
    assert grown < 250, f"a worker's peak memory grew by {grown:.0f} MB"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")
