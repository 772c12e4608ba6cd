"""Segments, audiences, models and the operational endpoints."""

from __future__ import annotations

import base64

from starlette.testclient import TestClient

from tests.api.test_assignments import CHAMPION, LAPSED, assert_error


def test_segments_have_keys_names_and_profiles(client: TestClient) -> None:
    body = client.get("/v1/segments").json()
    assert body["model_version"] == "test-rfm-k4"
    segments = body["segments"]
    assert len(segments) == 4
    assert len({s["key"] for s in segments}) == 4
    for segment in segments:
        assert segment["name"]
        assert segment["description"]
        assert set(segment["profile"]) == {"recency_days", "frequency", "monetary"}
        assert segment["profile"]["monetary"]["p25"] <= segment["profile"]["monetary"]["median"]
    assert abs(sum(s["share"] for s in segments) - 1) < 1e-3
    champions = next(s for s in segments if s["key"] == "champions")
    assert champions["profile"]["frequency"]["median"] == max(
        s["profile"]["frequency"]["median"] for s in segments
    )


def test_audience_pages_cover_thousands_without_gaps_or_duplicates(client: TestClient) -> None:
    wanted = {f"cust-{i:05d}" for i in range(3000)}
    batch = [{"customer_id": c, "features": CHAMPION} for c in sorted(wanted)]
    batch += [{"customer_id": f"other-{i}", "features": LAPSED} for i in range(500)]
    assert client.post("/v1/assignments/batch", json={"customers": batch}).status_code == 200

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 257, "purpose": "personalization"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/segments/champions/members", params=params).json()
        assert page["segment"] == "champions"
        seen.extend(page["members"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 12  # 3000 / 257, rounded up
    assert len(seen) == len(set(seen)) == 3000
    assert set(seen) == wanted
    assert seen == sorted(seen)


def test_members_move_when_a_customer_changes_segment(client: TestClient) -> None:
    client.post("/v1/assignments", json={"customer_id": "mover", "features": CHAMPION})
    everyone = {"purpose": "personalization"}
    members = client.get("/v1/segments/champions/members", params=everyone).json()["members"]
    assert "mover" in members
    client.post("/v1/assignments", json={"customer_id": "mover", "features": LAPSED})
    members = client.get("/v1/segments/champions/members", params=everyone).json()["members"]
    assert "mover" not in members


def test_unknown_segment_and_bad_cursor(client: TestClient) -> None:
    response = client.get("/v1/segments/no_such/members")
    assert response.status_code == 404
    assert_error(response.json(), "segment_not_found", "key")
    forged = base64.urlsafe_b64encode(b"something else").decode()
    for cursor in ("%%%", forged):
        response = client.get("/v1/segments/champions/members", params={"cursor": cursor})
        assert response.status_code == 422
        assert_error(response.json(), "invalid_input", "cursor")
    assert client.get("/v1/segments/champions/members", params={"limit": 0}).status_code == 422


def test_models_show_the_active_schema(client: TestClient) -> None:
    models = client.get("/v1/models").json()["models"]
    assert [m["version"] for m in models] == ["test-rfm-k4"]
    assert models[0]["active"] is True
    active = client.get("/v1/models/active").json()
    assert active["version"] == "test-rfm-k4"
    assert [f["name"] for f in active["features"]] == ["recency_days", "frequency", "monetary"]
    assert {f["type"] for f in active["features"]} == {"number", "integer"}
    assert all(f["minimum"] is not None for f in active["features"])
    assert [s["k"] for s in active["k_search"]] == [4]


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model_version"] == "test-rfm-k4"


def test_openapi_documents_every_contract_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/assignments",
        "/v1/assignments/batch",
        "/v1/customers/{customer_id}/segment",
        "/v1/customers/{customer_id}/assignments",
        "/v1/customers/{customer_id}",
        "/v1/segments",
        "/v1/segments/{key}/members",
        "/v1/models",
        "/v1/models/active",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths


def test_openapi_documents_the_contract_error_body(client: TestClient) -> None:
    """Errors are documented in the body the service really sends, never FastAPI's own."""
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = schema["components"]["schemas"]["ErrorOut"]
    assert error["required"] == ["error"]
    for path, method in (
        ("/v1/assignments/batch", "post"),
        ("/v1/segments/{key}/members", "get"),
        ("/v1/changes", "get"),
        ("/v1/erasures", "post"),
        ("/v1/models/{version}/activate", "post"),
    ):
        responses = schema["paths"][path][method]["responses"]
        for status in ("401", "403", "422", "503"):
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorOut"), (path, status)
    assert "401" not in schema["paths"]["/healthz"]["get"]["responses"]
