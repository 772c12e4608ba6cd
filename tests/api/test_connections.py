"""Issue 13, item 2, on a real `segments serve`: connections that never finish their headers are
answered 408 and closed after SEGMENTS_HTTP_HEADER_TIMEOUT_SECONDS (a client holding 1,000 of
them does not stop others being served meanwhile), idle kept-alive connections are closed, and
a worker refuses connections over its cap with the contract's 503 body."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import orjson

from tests.servers import Service, segments_server

HALF_SENT = b"POST /v1/assignments HTTP/1.1\r\nHost: segments\r\nContent-Type: application/json\r\n"
FULL_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: segments\r\n\r\n"


@contextmanager
def connections(service: Service, count: int) -> Iterator[list[socket.socket]]:
    opened = []
    try:
        for _ in range(count):
            opened.append(socket.create_connection(("127.0.0.1", service.port), timeout=10))
        yield opened
    finally:
        for sock in opened:
            sock.close()


def read_until_closed(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (within `seconds`)."""
    sock.settimeout(seconds)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def error_of(answer: bytes) -> tuple[str, dict[str, Any]]:
    """(status line, the contract's error object) of a raw HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), orjson.loads(body)["error"]


def test_half_sent_requests_are_cut_off_and_do_not_stop_others(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    with (
        segments_server(
            database_url,
            rfm_model_dir,
            tmp_path,
            workers=1,
            SEGMENTS_HTTP_HEADER_TIMEOUT_SECONDS="6",
            SEGMENTS_HTTP_KEEP_ALIVE_SECONDS="1",
        ) as service,
        connections(service, 1000) as stalled,
    ):
        for sock in stalled:
            sock.sendall(HALF_SENT)
        opened = time.monotonic()
        # while the 1,000 wait for their timeout, everyone else is served
        with httpx2.Client(base_url=service.base, timeout=10) as client:
            for i in range(20):
                answer = client.post(
                    "/v1/assignments",
                    json={
                        "customer_id": f"c{i}",
                        "features": {"recency_days": 3, "frequency": 7, "monetary": 4310.0},
                    },
                )
                assert answer.status_code == 200, answer.text
        assert time.monotonic() - opened < 6, "the others were served only after the timeout"
        for sock in stalled:
            status, error = error_of(read_until_closed(sock, 30))
            assert status == "HTTP/1.1 408 Request Timeout"
            assert error["code"] == "request_timeout"
            assert error["details"] == [
                {
                    "loc": "headers",
                    "problem": "not complete within 6 s (SEGMENTS_HTTP_HEADER_TIMEOUT_SECONDS)",
                }
            ]

        # a kept-alive connection: idle, it is closed after the keep-alive time; one that
        # starts a request and stalls is cut off like a new one
        with connections(service, 2) as (idle, slow):
            for sock in (idle, slow):
                sock.sendall(FULL_REQUEST)
                received = b""
                while not received.endswith(b'{"status":"ok"}'):  # headers and body may part
                    received += sock.recv(65536)
                assert received.startswith(b"HTTP/1.1 200")
            slow.sendall(HALF_SENT)
            assert read_until_closed(idle, 5) == b""
            status, error = error_of(read_until_closed(slow, 20))
            assert status == "HTTP/1.1 408 Request Timeout"


def test_connections_over_the_cap_are_refused_with_the_contract_body(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    with segments_server(
        database_url,
        rfm_model_dir,
        tmp_path,
        workers=1,
        SEGMENTS_MAX_CONNECTIONS_PER_WORKER="20",
    ) as service:
        with connections(service, 20) as held:
            # all 20 accepted: each is answered when it asks
            held[0].sendall(FULL_REQUEST)
            assert held[0].recv(65536).startswith(b"HTTP/1.1 200")
            with connections(service, 5) as extra:
                for sock in extra:
                    status, error = error_of(read_until_closed(sock, 10))
                    assert status == "HTTP/1.1 503 Service Unavailable"
                    assert error["code"] == "too_many_connections"
                    assert error["details"][0]["loc"] == "connection"
        # the held ones closed: room again
        assert httpx2.get(f"{service.base}/healthz", timeout=10).status_code == 200


def test_a_request_the_parser_refuses_gets_the_contract_body(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    # a URL far over what the parser takes (schemathesis sent one, as a 100 KB cursor), and a
    # request line that is not HTTP
    with segments_server(database_url, rfm_model_dir, tmp_path, workers=1) as service:
        for request in (
            b"GET /v1/changes?since=" + b"%F0%97%84%AE" * 8192 + b" HTTP/1.1\r\nHost: s\r\n\r\n",
            b"NOT HTTP AT ALL\r\n\r\n",
        ):
            with connections(service, 1) as (sock,):
                sock.sendall(request)
                status, error = error_of(read_until_closed(sock, 10))
            assert status == "HTTP/1.1 400 Bad Request"
            assert error["code"] == "malformed_request"
            assert error["details"][0]["loc"] == "request"
        assert httpx2.get(f"{service.base}/healthz", timeout=10).status_code == 200
