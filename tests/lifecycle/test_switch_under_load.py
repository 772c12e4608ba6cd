"""Switching models under load on a real `segments serve --workers 2`: not one request fails,
every worker converges, and each answer names the model that produced it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx2
import pytest

from tests.conftest import clear_tables
from tests.lifecycle.test_registry import CHAMPION, LAPSED, segments_cli
from tests.servers import processes, segments_server

pytestmark = pytest.mark.slow

CONNECTIONS = 16


async def _load(
    base: str, stop: asyncio.Event, answers: list[tuple[float, int, str]], worker: int
) -> None:
    async with httpx2.AsyncClient(base_url=base, timeout=10) as client:
        sent = 0
        while not stop.is_set():
            sent += 1
            features = CHAMPION if sent % 2 else LAPSED
            body: dict[str, object]
            if sent % 10 == 0:
                body = {
                    "customers": [
                        {"customer_id": f"l{worker}-{sent}-{i}", "features": features}
                        for i in range(20)
                    ]
                }
                response = await client.post("/v1/assignments/batch", json=body)
                version = response.json().get("model_version", "") if response.is_success else ""
            else:
                body = {"customer_id": f"l{worker}-{sent}", "features": features}
                response = await client.post("/v1/assignments", json=body)
                version = response.json().get("model_version", "") if response.is_success else ""
            answers.append((time.monotonic(), response.status_code, version))


async def _served_by_every_worker(base: str, version: str, seconds: float) -> bool:
    """Fresh connections spread over the workers: all of them answer with `version`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        versions = set()
        for _ in range(12):
            async with httpx2.AsyncClient(base_url=base, headers={"connection": "close"}) as c:
                versions.add((await c.get("/readyz")).json()["model_version"])
        if versions == {version}:
            return True
        await asyncio.sleep(0.1)
    return False


def test_activate_rollback_and_activate_again_under_load_fail_no_request(
    database_url: str, rfm_model_dir: Path, rfm_model_b: Path, tmp_path: Path
) -> None:
    clear_tables(database_url)
    with segments_server(
        database_url, rfm_model_dir, tmp_path, workers=2, SEGMENTS_MODEL_POLL_SECONDS="0.5"
    ) as service:
        assert segments_cli(database_url, "models", "register", str(rfm_model_b))[0] == 0

        async def scenario() -> tuple[list[tuple[float, int, str]], dict[str, float]]:
            answers: list[tuple[float, int, str]] = []
            stop = asyncio.Event()
            load = [
                asyncio.create_task(_load(service.base, stop, answers, w))
                for w in range(CONNECTIONS)
            ]
            switched: dict[str, float] = {}
            async with httpx2.AsyncClient(base_url=service.base, timeout=30) as admin:
                await asyncio.sleep(1.0)
                asked = time.monotonic()
                response = await admin.post("/v1/models/test-rfm-k5/activate")
                assert response.status_code == 200, response.text
                assert await _served_by_every_worker(service.base, "test-rfm-k5", 15)
                switched["activated"] = time.monotonic()
                switched["convergence"] = switched["activated"] - asked
                await asyncio.sleep(1.0)
                response = await admin.post("/v1/models/rollback")
                assert response.status_code == 200, response.text
                assert await _served_by_every_worker(service.base, "test-rfm-k4", 15)
                switched["rolled back"] = time.monotonic()
                await asyncio.sleep(1.0)
                code, output = await asyncio.to_thread(
                    segments_cli, database_url, "models", "activate", "test-rfm-k5"
                )
                assert code == 0, output
                assert await _served_by_every_worker(service.base, "test-rfm-k5", 15)
                switched["activated again"] = time.monotonic()
                await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*load)
            return answers, switched

        answers, switched = asyncio.run(scenario())

    failed = [(status, version) for _, status, version in answers if status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    assert len(answers) > 500, f"too little load to mean anything: {len(answers)} requests"
    versions = [version for _, _, version in answers]
    assert set(versions) == {"test-rfm-k4", "test-rfm-k5"}
    # once every worker had switched, every answer came from the new model
    after_rollback = [v for t, _, v in answers if t > switched["rolled back"] + 0.2]
    assert "test-rfm-k4" in after_rollback
    # every worker polls each 0.5 s: a second after the check, none can be on the old model
    late = [v for t, _, v in answers if t > switched["activated again"] + 1.0]
    assert late
    assert set(late) == {"test-rfm-k5"}
    print(
        f"{len(answers)} requests over three switches, none failed; every worker served the "
        f"new version {switched['convergence']:.2f} s after the activation call"
    )


def _workers_of(server_pid: int) -> list[int]:
    """uvicorn's worker processes: the server's children started by multiprocessing's spawn."""
    return processes(
        lambda parent, command: parent == server_pid and any(b"spawn_main" in c for c in command)
    )


def test_a_worker_uvicorn_restarts_does_not_undo_an_activation(
    database_url: str, rfm_model_dir: Path, rfm_model_b: Path, tmp_path: Path
) -> None:
    """`serve --model k4` activates k4 once, at launch: a worker restarted after someone
    activated k5 must follow the registry to k5, not put k4 back for the whole fleet."""
    clear_tables(database_url)
    with segments_server(
        database_url, rfm_model_dir, tmp_path, workers=2, SEGMENTS_MODEL_POLL_SECONDS="0.5"
    ) as service:
        assert segments_cli(database_url, "models", "register", str(rfm_model_b))[0] == 0
        activated = httpx2.post(f"{service.base}/v1/models/test-rfm-k5/activate", timeout=30)
        assert activated.status_code == 200, activated.text
        assert asyncio.run(_served_by_every_worker(service.base, "test-rfm-k5", 15))

        workers = _workers_of(service.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while service.log.read_bytes().count(b"Application startup complete.") < 3:
            assert time.monotonic() < deadline, "uvicorn did not restart the killed worker"
            time.sleep(0.1)
        replacement = set(_workers_of(service.pid)) - set(workers)
        assert len(replacement) == 1, "the killed worker was not replaced"

        active = httpx2.get(f"{service.base}/v1/models/active").json()
        assert active["version"] == "test-rfm-k5"
        # a few polls later, still every worker on k5 (a revert would show within 0.5 s)
        time.sleep(1.5)
        assert asyncio.run(_served_by_every_worker(service.base, "test-rfm-k5", 15))
        assert httpx2.get(f"{service.base}/v1/models/active").json()["version"] == "test-rfm-k5"
    log = service.log.read_text()
    assert "now serving model test-rfm-k5" in log  # the service's own logs reach the operator
