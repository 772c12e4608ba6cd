"""Every request leaves one JSON access line and an id: over the real app (keys, lifespan,
PostgreSQL), and under a real `segments serve`, whose every log line is JSON."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import orjson
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from app.auth.keys import Scope, generate_key, key_config_line
from app.logformat import JsonFormatter, TextFormatter, log_config
from app.main import create_app
from app.metrics.middleware import RequestRecorder
from tests.conftest import clear_tables, make_settings
from tests.servers import segments_server

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}
CRM_KEY = generate_key()
CUSTOMER = "cust-4711-private"
EMAIL = "jane.doe@example.com"
GENERATED = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def keyed(database_url: str, rfm_model_dir: Path) -> Iterator[TestClient]:
    clear_tables(database_url)
    entry = key_config_line("crm", CRM_KEY, [Scope.ASSIGN, Scope.READ])
    settings = make_settings(database_url, rfm_model_dir, api_keys=entry, allow_anonymous=False)
    with TestClient(create_app(settings)) as client:
        yield client


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    formatter = JsonFormatter()
    return [
        orjson.loads(formatter.format(record))
        for record in caplog.records
        if record.name == "app.access"
    ]


def test_one_json_line_per_request_with_its_fields_and_no_key_or_customer(
    keyed: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app")
    headers = {"authorization": f"Bearer {CRM_KEY}"}
    body = {"customer_id": CUSTOMER, "email": EMAIL, "features": CHAMPION}
    stored = keyed.post("/v1/assignments", json=body, headers=headers)
    assert stored.status_code == 200, stored.text
    read = keyed.get(f"/v1/customers/{CUSTOMER}/segment?purpose=personalization", headers=headers)
    assert read.status_code == 200, read.text
    missing = keyed.get(f"/v1/customers/{CUSTOMER}/segment")  # no key: 401
    unknown = keyed.get(f"/nowhere/{CUSTOMER}")  # no route: 404

    lines = access_lines(caplog)
    assert len(lines) == 4, lines
    expected = [
        ("POST", "/v1/assignments", 200, "crm", stored),
        ("GET", "/v1/customers/{customer_id}/segment", 200, "crm", read),
        ("GET", "/v1/customers/{customer_id}/segment", 401, None, missing),
        ("GET", "unmatched", 404, None, unknown),
    ]
    for line, (method, route, status, key, response) in zip(lines, expected, strict=True):
        assert line["logger"] == "app.access"
        assert line["level"] == "info"
        assert (line["method"], line["route"], line["status"], line["key"]) == (
            method,
            route,
            status,
            key,
        )
        assert isinstance(line["duration_ms"], float)
        assert 0 < line["duration_ms"] < 10_000
        assert line["request_id"] == response.headers["x-request-id"]
        assert str(line["time"]).endswith("Z")
    everything = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for secret in (CRM_KEY, CRM_KEY[3:20], CUSTOMER, EMAIL, "purpose="):
        assert secret not in everything


def test_the_request_id_is_the_callers_if_sane_else_a_new_one(keyed: TestClient) -> None:
    given = keyed.get("/healthz", headers={"x-request-id": "order-sync.2026-12-04_17"})
    assert given.headers["x-request-id"] == "order-sync.2026-12-04_17"
    for insane in ("has space", "x" * 129, "semi;colon", "ünï"):
        answer = keyed.get("/healthz", headers=[(b"x-request-id", insane.encode())])
        assert GENERATED.match(answer.headers["x-request-id"]), insane
    ids = {keyed.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(GENERATED.match(i) for i in ids)
    # errors carry it too: 401, 404, 405, 422
    for response in (
        keyed.get("/v1/segments"),
        keyed.get("/nowhere"),
        keyed.put("/healthz"),
        keyed.post(
            "/v1/assignments",
            content=b"{",
            headers={"authorization": f"Bearer {CRM_KEY}", "x-request-id": "r-1"},
        ),
    ):
        assert response.status_code >= 400
        assert "x-request-id" in response.headers, response.status_code


def test_a_bug_answers_500_in_the_contract_body_with_its_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Starlette renders an unexpected exception outside every middleware; the recorder
    answers it itself, so even a 500 carries its id and leaves its access line."""

    async def boom(_: Request) -> Response:
        raise RuntimeError("a bug")

    caplog.set_level(logging.INFO, logger="app.access")
    app = Starlette(routes=[Route("/boom", boom)], middleware=[Middleware(RequestRecorder)])
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"x-request-id": "bug-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "bug-1"
    assert response.json()["error"]["code"] == "internal_error"
    [line] = access_lines(caplog)
    assert (line["status"], line["route"], line["request_id"]) == (500, "/boom", "bug-1")


def test_the_text_format_is_one_readable_line_with_the_fields() -> None:
    record = logging.LogRecord("app.access", logging.INFO, __file__, 1, "%s", ("GET",), None)
    record.fields = {"route": "/v1/segments", "status": 200}
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert line.endswith("GET route=/v1/segments status=200")
    config = log_config("warning", "text")
    assert config["formatters"]["default"]["()"] == "app.logformat.TextFormatter"
    assert config["loggers"]["app"]["level"] == "WARNING"


@pytest.mark.slow
def test_segments_serve_writes_every_log_line_as_json(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    clear_tables(database_url)
    entry = key_config_line("crm", CRM_KEY, [Scope.ASSIGN, Scope.READ])
    with segments_server(
        database_url,
        rfm_model_dir,
        tmp_path,
        workers=1,
        SEGMENTS_API_KEYS=entry,
        SEGMENTS_ALLOW_ANONYMOUS="false",
    ) as service:
        headers = {"authorization": f"Bearer {CRM_KEY}", "x-request-id": "served-1"}
        body = {"customer_id": CUSTOMER, "email": EMAIL, "features": CHAMPION}
        answer = httpx2.post(f"{service.base}/v1/assignments", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == "served-1"
        wrong = httpx2.get(
            f"{service.base}/v1/customers/{CUSTOMER}/segment",
            headers={"authorization": f"Bearer {generate_key()}"},
        )
        assert wrong.status_code == 401
    text = service.log.read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]  # each is JSON
    messages = [line["message"] for line in lines]
    assert any("Application startup complete" in str(m) for m in messages)  # uvicorn's
    assert any("serving model test-rfm-k4" in str(m) for m in messages)  # the service's
    [access] = [line for line in lines if line.get("request_id") == "served-1"]
    assert (access["logger"], access["route"], access["status"], access["key"]) == (
        "app.access",
        "/v1/assignments",
        200,
        "crm",
    )
    [failure] = [line for line in lines if line["logger"] == "app.auth.guard"]
    assert (failure["level"], failure["reason"], failure["address"]) == (
        "warning",
        "unknown",
        "127.0.0.1",
    )
    assert failure["request_id"] == wrong.headers["x-request-id"]
    for secret in (CRM_KEY, CUSTOMER, EMAIL):
        assert secret not in text
