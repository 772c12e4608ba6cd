"""A 200,000-member audience exported from PostgreSQL by a real server and by `segments export`,
with the process's memory sampled throughout: it must stay flat while tens of megabytes go out."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx2
import orjson
import pytest

from tests.conftest import clear_tables
from tests.servers import segments_server

MEMBERS = 200_000
BATCH = 10_000
CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}
# Growth allowed while exporting, far below what holding the export would take: its text alone
# is ~45 MB (NDJSON with two hashes per member), its rows as Python objects several times that.
MAX_GROWTH_MB = 16.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@contextmanager
def sampled_rss(pid: int) -> Iterator[list[float]]:
    """Samples of the process's resident memory (MB) every 10 ms while the block runs."""
    samples = [rss_mb(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                samples.append(rss_mb(pid))
            except (OSError, AssertionError):
                return  # the process ended
            done.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        done.set()
        sampler.join()


def seed(base: str) -> None:
    """200,000 champions with e-mail addresses and advertising consent, through the batch API."""

    def post(start: int) -> None:
        customers = [
            {
                "customer_id": f"m{i:06d}",
                "features": CHAMPION,
                "email": f"member{i}@example.com",
                "consent": {"advertising": True},
            }
            for i in range(start, start + BATCH)
        ]
        with httpx2.Client(base_url=base, timeout=120) as client:
            response = client.post("/v1/assignments/batch", json={"customers": customers})
            assert response.status_code == 200, response.text[:500]

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(post, range(0, MEMBERS, BATCH)))


def export(base: str, params: dict[str, str]) -> tuple[int, int, str]:
    """Stream one export, reading it as a slow-ish client would: (lines, bytes, first line)."""
    lines = size = 0
    first = ""
    with (
        httpx2.Client(base_url=base, timeout=120) as client,
        client.stream("GET", "/v1/segments/champions/members", params=params) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if not first:
                first = line
            lines += 1
            size += len(line) + 1
    return lines, size, first


@pytest.mark.slow
def test_a_200k_audience_streams_in_flat_memory(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    clear_tables(database_url)
    with segments_server(
        database_url, rfm_model_dir, tmp_path, workers=1, SEGMENTS_MAX_EXPORTS="1"
    ) as service:
        seed(service.base)
        # warm up: the first export imports and caches what every export uses
        export(service.base, {"format": "csv", "limit": "1"})
        results = {}
        for name, params in {
            "ndjson+google": {
                "format": "ndjson",
                "identifiers": "google",
                "purpose": "advertising",
            },
            "csv+meta": {"format": "csv", "identifiers": "meta", "purpose": "advertising"},
        }.items():
            with sampled_rss(service.pid) as samples:
                lines, size, first = export(service.base, params)
            results[name] = (lines, size, first, samples)
        exports_are_limited_while_a_slow_reader_holds_one(service.base)

    report = []
    for name, (lines, size, _, samples) in results.items():
        growth = max(samples) - samples[0]
        report.append(
            f"{name}: {lines} lines, {size / 1e6:.1f} MB sent; server RSS {samples[0]:.0f} MB "
            f"before, peak {max(samples):.0f} MB (+{growth:.1f} MB, {len(samples)} samples)"
        )
        assert growth < MAX_GROWTH_MB, report[-1]
    print("\n" + "\n".join(report))  # the figures quoted in the note (pytest -s)

    ndjson_lines, ndjson_size, ndjson_first, _ = results["ndjson+google"]
    assert ndjson_lines == MEMBERS
    assert ndjson_size > 2 * MAX_GROWTH_MB * 1e6  # far bigger than the memory it may use
    first = orjson.loads(ndjson_first)
    assert first["customer_id"] == "m000000"
    assert first["email_sha256"] == hashlib.sha256(b"member0@example.com").hexdigest()
    csv_lines, _, csv_first, _ = results["csv+meta"]
    assert csv_lines == MEMBERS + 1  # and the header
    assert csv_first == "customer_id,segment,entered_at,email_sha256,phone_sha256"

    # the same export from the CLI, into a file, with its own memory sampled
    out = tmp_path / "champions.csv"
    command = [
        str(Path(sys.executable).with_name("segments")),
        "export",
        "--segment",
        "champions",
        "--format",
        "csv",
        "--identifiers",
        "google",
        "--purpose",
        "advertising",
        "--out",
        str(out),
    ]
    environment = {**os.environ, "DATABASE_URL": database_url}
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peak = 0.0
    while process.poll() is None:
        try:
            peak = max(peak, rss_mb(process.pid))
        except (OSError, AssertionError):
            break
        time.sleep(0.01)
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().strip(), "the feed cursor is printed"
    assert f"wrote {MEMBERS} members" in stderr.decode()
    with out.open() as exported:
        assert sum(1 for _ in exported) == MEMBERS + 1
    print(f"segments export: {out.stat().st_size / 1e6:.1f} MB file, peak RSS {peak:.0f} MB")
    assert not list(tmp_path.glob(".*.partial"))


def exports_are_limited_while_a_slow_reader_holds_one(base: str) -> None:
    """SEGMENTS_MAX_EXPORTS=1: an export whose client pauses keeps its slot (and connection), so
    the next is a 429 in the contract's body, while pages still work; once read, a slot is free."""
    with (
        httpx2.Client(base_url=base, timeout=120) as client,
        client.stream("GET", "/v1/segments/champions/members", params={"format": "csv"}) as slow,
    ):
        assert slow.status_code == 200
        lines = slow.iter_lines()
        assert next(lines).startswith("customer_id,")  # then the reader pauses
        refused = client.get("/v1/segments/champions/members", params={"format": "ndjson"})
        assert refused.status_code == 429, refused.text[:300]
        error = refused.json()["error"]
        assert error["code"] == "too_many_exports"
        assert error["details"][0]["loc"] == "format"
        page = client.get("/v1/segments/champions/members", params={"limit": 10})
        assert page.status_code == 200
        assert sum(1 for _ in lines) == MEMBERS  # the slow reader gets everything
    after = export(base, {"format": "csv"})
    assert after[0] == MEMBERS + 1
