"""Issue 13, item 4, on a real `segments serve`: SIGTERM while a client has stopped reading a
streamed export. The server stops accepting at once (a new client sees its connection refused),
closes idle kept-alive connections cleanly (end of stream, not a reset), cuts the stalled stream
after SEGMENTS_SHUTDOWN_GRACE_SECONDS and exits well within an orchestrator's grace period."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import httpx2
import pytest

from tests.audience.test_export_scale import CHAMPION
from tests.conftest import clear_tables
from tests.servers import segments_server

MEMBERS = 50_000  # ~11 MB of NDJSON with hashes: far more than the sockets' buffers hold
GRACE = 3


def seed(base: str) -> None:
    with httpx2.Client(base_url=base, timeout=120) as client:
        for start in range(0, MEMBERS, 10_000):
            customers = [
                {
                    "customer_id": f"m{i:06d}",
                    "features": CHAMPION,
                    "email": f"member{i}@example.com",
                    "consent": {"advertising": True},
                }
                for i in range(start, start + 10_000)
            ]
            answer = client.post("/v1/assignments/batch", json={"customers": customers})
            assert answer.status_code == 200, answer.text[:300]


def stalled_export(port: int) -> socket.socket:
    """A client that asks for the whole audience, reads its first bytes and stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: stalls soon
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"GET /v1/segments/champions/members?format=ndjson&identifiers=google"
        b"&purpose=advertising HTTP/1.1\r\nHost: segments\r\n\r\n"
    )
    sock.settimeout(30)
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    return sock


def idle_keep_alive(port: int) -> socket.socket:
    """A kept-alive connection, its one request answered, now idle."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: segments\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status":"ok"}'):  # headers and body may come apart
        answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200")
    return sock


@pytest.mark.slow
def test_sigterm_with_a_stalled_export_ends_within_the_grace(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    clear_tables(database_url)
    with segments_server(
        database_url,
        rfm_model_dir,
        tmp_path,
        workers=1,
        SEGMENTS_SHUTDOWN_GRACE_SECONDS=str(GRACE),
        # the idle connection must still be open when SIGTERM comes
        SEGMENTS_HTTP_KEEP_ALIVE_SECONDS="60",
    ) as service:
        seed(service.base)
        exporting = stalled_export(service.port)
        idle = idle_keep_alive(service.port)
        time.sleep(1)  # the export fills the socket buffers and blocks on the stalled client
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)

        # the idle connection is closed cleanly: end of stream, not ECONNRESET
        idle.settimeout(10)
        assert idle.recv(1024) == b""
        # new clients are refused at once, not left hanging
        refused_at = None
        while time.monotonic() - signalled < GRACE:
            try:
                socket.create_connection(("127.0.0.1", service.port), timeout=1).close()
            except ConnectionRefusedError:
                refused_at = time.monotonic() - signalled
                break
            time.sleep(0.05)
        assert refused_at is not None, "new connections were still accepted during the grace"

        # the stalled export is cut after the grace and the process exits: 3 s of grace plus
        # the application's own shutdown, far below the 35 s a pod has after its preStop
        service.process.wait(timeout=GRACE + 20)
        took = time.monotonic() - signalled
        assert took >= GRACE - 0.5, f"exited after {took:.1f} s: the grace was not given"
        exporting.close()
        idle.close()
    log = service.log.read_text()
    assert "timeout graceful shutdown exceeded" in log, log[-2000:]
