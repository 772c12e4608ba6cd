"""The quick start as a new user meets it: no DATABASE_URL, `segments migrate` then `segments
serve`, on the embedded PostgreSQL, whatever else listens on 5432 (in CI, another PostgreSQL
does). Stopping leaves no server behind, and the next start finds the data of the last."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from tests.servers import free_port, processes, stop, tail, wait_until_ready

pytestmark = pytest.mark.slow
SEGMENTS = Path(sys.executable).with_name("segments")
CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}


def _environment() -> dict[str, str]:
    """A new user's: nothing of the tests' database, keys or erasure key."""
    drop = {"DATABASE_URL", "TEST_DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SEGMENTS_")}


def _postgres_processes(data: Path) -> list[int]:
    """The processes of a PostgreSQL server whose data folder is `data`."""
    return processes(lambda _, command: b"postgres" in command[0] and str(data).encode() in command)


@contextmanager
def quick_start(folder: Path, port: int) -> Iterator[tuple[str, str]]:
    """`segments serve --port PORT` run in `folder` as `make serve` runs it; yields the base
    URL and what it printed so far once it answers."""
    log = folder / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(SEGMENTS), "serve", "--port", str(port)],
            cwd=folder,
            env=_environment(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{base}/readyz", process, log, "segments serve (quick start)")
        yield base, " ".join(log.read_text().split())
    finally:
        stop(process)
    assert process.returncode is not None
    assert "Traceback" not in log.read_text(), tail(log)


def test_the_quick_start_serves_from_an_embedded_postgres_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    data = tmp_path / ".segments" / "postgres"
    migrated = subprocess.run(
        [str(SEGMENTS), "migrate"], cwd=tmp_path, env=_environment(), capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr
    assert (data / "PG_VERSION").exists()
    assert _postgres_processes(data) == []  # `migrate` started it, and stopped it

    with quick_start(tmp_path, free_port()) as (base, printed):
        assert "embedded PostgreSQL 18" in printed
        assert str(data) in printed  # it says where the data is
        assert _postgres_processes(data) != []
        ready = httpx2.get(f"{base}/readyz").json()
        assert ready["status"] == "ready"
        assert ready["authentication"].startswith("DISABLED")  # and says so
        stored = httpx2.post(
            f"{base}/v1/assignments", json={"customer_id": "first-run", "features": CHAMPION}
        )
        assert stored.status_code == 200, stored.text
    assert _postgres_processes(data) == []

    # the next start finds the data of the first, tombstones still keyed the same
    with quick_start(tmp_path, free_port()) as (base, _):
        found = httpx2.get(f"{base}/v1/customers/first-run/segment")
        assert found.status_code == 200, found.text
        assert found.json()["segment"]["key"] == "champions"
        assert httpx2.delete(f"{base}/v1/customers/first-run").status_code == 204
    with quick_start(tmp_path, free_port()) as (base, _):
        again = {"customer_id": "first-run", "features": CHAMPION}
        assert httpx2.post(f"{base}/v1/assignments", json=again).status_code == 200
        # the tombstone of the last run still stands: scored, not stored
        assert httpx2.get(f"{base}/v1/customers/first-run/segment").status_code == 404
    assert _postgres_processes(data) == []
