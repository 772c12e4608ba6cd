"""The hot routes dispatched past FastAPI's router (app.api.direct) answer as any route does:
the same errors in the same bodies, the same route label, the same 500 for a bug."""

from __future__ import annotations

import logging

import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from app.api.direct import DirectRoutes
from app.main import create_app
from app.service.assignments import AssignmentService
from app.settings import Settings
from tests.conftest import clear_tables, count_rows, metric_value

CUSTOMER = {"customer_id": "d-1", "features": {"recency_days": 3, "frequency": 9, "monetary": 900}}


def test_the_direct_routes_keep_every_answer_of_a_routed_request(
    client: TestClient, database_url: str
) -> None:
    """The status, error body and route label of each hot route, stored or not, and the
    routed answers around them (wrong method, trailing slash) unchanged."""
    assert client.post("/v1/assignments?persist=false", json=CUSTOMER).status_code == 200
    assert count_rows(database_url, "assignments") == 0
    assert client.post("/v1/assignments", json=CUSTOMER).status_code == 200
    assert count_rows(database_url, "assignments") == 1
    batch = client.post("/v1/assignments/batch", json={"customers": [CUSTOMER, CUSTOMER]})
    assert batch.status_code == 200, batch.text
    invalid = client.post("/v1/assignments/batch", json={"customers": [CUSTOMER, {"x": 1}]})
    assert invalid.status_code == 422
    assert invalid.json()["error"]["details"][0]["loc"].startswith("customers[1]")
    bad_query = client.post("/v1/assignments?persist=maybe", json=CUSTOMER)
    assert bad_query.status_code == 422
    assert bad_query.json()["error"]["details"] == [
        {"loc": "persist", "problem": "got 'maybe'; use true or false"}
    ]
    events = client.post("/v1/events", json={"events": "nope"})
    assert events.status_code == 422, events.text
    assert client.get("/v1/assignments").json()["error"]["code"] == "method_not_allowed"
    slash = client.post("/v1/assignments/", json=CUSTOMER, follow_redirects=False)
    assert slash.status_code == 307  # the router's redirect, as before
    assert slash.headers["location"].endswith("/v1/assignments")
    exposition = client.get("/metrics").text
    for route, status, count in (
        ("/v1/assignments", "200", 2),
        ("/v1/assignments", "422", 1),
        ("/v1/assignments/batch", "422", 1),
        ("/v1/events", "422", 1),
    ):
        assert (
            metric_value(
                exposition,
                "segment_request_duration_seconds_count",
                route=route,
                method="POST",
                status=status,
            )
            >= count
        ), (route, status)


def test_a_bug_on_a_direct_route_answers_500_in_the_contract_body(
    settings: Settings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    clear_tables(database_url)
    monkeypatch.setattr(AssignmentService, "assign_one", broken)
    caplog.set_level(logging.INFO, logger="app.access")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answer = client.post("/v1/assignments", json=CUSTOMER, headers={"x-request-id": "bug-2"})
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
    assert answer.headers["x-request-id"] == "bug-2"
    [line] = [r for r in caplog.records if r.name == "app.access"]
    assert line.fields["route"] == "/v1/assignments"  # type: ignore[attr-defined]


def test_behind_a_root_path_the_router_serves_the_hot_routes(settings: Settings) -> None:
    with TestClient(create_app(settings), root_path="/segments") as client:
        answer = client.post("/v1/assignments?persist=false", json=CUSTOMER)
    assert answer.status_code == 200, answer.text
    assert answer.json()["customer_id"] == "d-1"


def test_an_endpoint_with_parameters_cannot_be_dispatched_directly() -> None:
    """It would get the Request and none of what it declared: refused when the app starts."""
    router = APIRouter()

    @router.post("/takes-a-query")
    async def takes_a_query(request: Request, limit: int = 10) -> Response:
        return Response()

    with pytest.raises(TypeError, match="takes_a_query is dispatched directly"):
        DirectRoutes(
            lambda *_: None,  # type: ignore[arg-type]
            routes=router.routes,
            endpoints=[takes_a_query],
            exception_handlers={},
        )


def test_an_endpoint_no_route_serves_stops_the_app_starting() -> None:
    """Never a silent fall-back to the router: the app's routes must serve every endpoint named
    (they are found through included routers too, as FastAPI keeps them)."""
    router = APIRouter()

    @router.post("/served")
    async def served(request: Request) -> Response:
        return Response(status_code=204)

    async def not_served(request: Request) -> Response:
        return Response()

    app = FastAPI()
    app.include_router(router)
    direct = DirectRoutes(
        PlainTextResponse("the router", status_code=404),
        routes=app.routes,
        endpoints=[served],
        exception_handlers={},
    )
    client = TestClient(direct)  # no lifespan: the router stand-in answers only requests
    assert client.post("/served").status_code == 204  # the endpoint, not the router
    assert client.post("/elsewhere").text == "the router"
    with pytest.raises(LookupError, match="no route of the app serves not_served"):
        DirectRoutes(
            PlainTextResponse("the router", status_code=404),
            routes=app.routes,
            endpoints=[served, not_served],
            exception_handlers={},
        )
