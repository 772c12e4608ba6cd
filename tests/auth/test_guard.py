"""Every endpoint behind the right scope, over the real app: 401 and 403 in the contract's
error body, open operations endpoints, no key in any body or log, and the open quickstart."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.routing import APIRoute
from starlette.testclient import TestClient
from typer.testing import CliRunner

from app.auth.keys import Scope, generate_key, key_config_line
from app.cli import cli
from app.main import create_app
from app.settings import ConfigurationError
from tests.conftest import clear_tables, make_settings

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}
KEYS = {scope: generate_key() for scope in Scope}
ALL_SCOPES = generate_key()

# (method, path, json body, scope it needs)
ENDPOINTS: list[tuple[str, str, object, Scope]] = [
    ("POST", "/v1/assignments", {"customer_id": "a1", "features": CHAMPION}, Scope.ASSIGN),
    (
        "POST",
        "/v1/assignments/batch",
        {"customers": [{"customer_id": "a2", "features": CHAMPION}]},
        Scope.ASSIGN,
    ),
    ("GET", "/v1/customers/a1/segment", None, Scope.READ),
    ("GET", "/v1/customers/a1/assignments", None, Scope.READ),
    ("GET", "/v1/segments", None, Scope.READ),
    ("GET", "/v1/models", None, Scope.READ),
    ("GET", "/v1/models/active", None, Scope.READ),
    ("GET", "/v1/models/test-rfm-k4", None, Scope.READ),
    ("GET", "/v1/models/test-rfm-k4/comparison", None, Scope.READ),
    ("GET", "/v1/segments/champions/members", None, Scope.AUDIENCE),
    ("GET", "/v1/segments/champions/members?format=csv", None, Scope.AUDIENCE),
    ("GET", "/v1/changes", None, Scope.AUDIENCE),
    ("GET", "/v1/segments/champions/changes", None, Scope.AUDIENCE),
    ("POST", "/v1/models/test-rfm-k4/activate", None, Scope.ADMIN),
    ("POST", "/v1/models/rollback", None, Scope.ADMIN),
    ("POST", "/v1/models/test-rfm-k4/shadow", None, Scope.ADMIN),
    ("DELETE", "/v1/models/shadow", None, Scope.ADMIN),
    ("DELETE", "/v1/customers/a2", None, Scope.ADMIN),
    ("POST", "/v1/erasures", {"customer_ids": ["a3"]}, Scope.ADMIN),
    ("POST", "/v1/customers/a3/restore", None, Scope.ADMIN),
    ("GET", "/v1/customers/a3/erasures", None, Scope.ADMIN),
]


# where a key with just the advertising scope gets through too, held to that purpose
ADVERTISING_ROUTES = {
    ("GET", "/v1/customers/a1/segment"),
    ("GET", "/v1/segments"),
    ("GET", "/v1/segments/champions/members"),
    ("GET", "/v1/segments/champions/members?format=csv"),
    ("GET", "/v1/changes"),
    ("GET", "/v1/segments/champions/changes"),
}


def test_the_table_names_every_api_route() -> None:
    """A new route must join ENDPOINTS (and so the scope checks) to pass."""
    app = create_app(make_settings("postgresql://unused", Path("models")))
    routes = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/v1/")
        for method in route.methods or ()
    }
    covered = {(method, path.split("?")[0]) for method, path, _, _ in ENDPOINTS}
    templates = {(m, p) for m, p in routes if any(_matches(p, c) for mc, c in covered if mc == m)}
    assert routes == templates, f"routes without a scope check: {sorted(routes - templates)}"


def test_openapi_names_the_scopes_each_operation_takes() -> None:
    """Client generators and readers of /docs see which key an operation needs."""
    document = create_app(make_settings("postgresql://unused", Path("models"))).openapi()
    for method, path, _, scope in ENDPOINTS:
        concrete = path.split("?")[0]
        operation = next(
            operations[method.lower()]
            for template, operations in sorted(  # /v1/models/rollback before /v1/models/{version}
                document["paths"].items(), key=lambda item: "{" in item[0]
            )
            if _matches(template, concrete) and method.lower() in operations
        )
        # alternatives: one requirement per scope that admits (roles in one are all needed)
        expected = [{"HTTPBearer": [scope.value]}]
        if (method, path) in ADVERTISING_ROUTES:
            expected.append({"HTTPBearer": [Scope.ADVERTISING.value]})
        assert operation["security"] == expected, (method, path)
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in document["paths"][open_path]["get"]


def _matches(template: str, path: str) -> bool:
    parts, concrete = template.split("/"), path.split("/")
    return len(parts) == len(concrete) and all(
        t == c or (t.startswith("{") and t.endswith("}"))
        for t, c in zip(parts, concrete, strict=True)
    )


@pytest.fixture
def guarded(database_url: str, rfm_model_dir: Path) -> Iterator[TestClient]:
    clear_tables(database_url)
    entries = [key_config_line(f"only-{s.value}", k, [s]) for s, k in KEYS.items()]
    entries.append(key_config_line("everything", ALL_SCOPES, list(Scope)))
    settings = make_settings(
        database_url, rfm_model_dir, api_keys="\n".join(entries), allow_anonymous=False
    )
    with TestClient(create_app(settings)) as client:
        yield client


def call(
    client: TestClient, method: str, path: str, body: object, key: str | None
) -> tuple[int, dict[str, object], str]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = client.request(method, path, json=body, headers=headers)
    is_json = response.headers.get("content-type", "").startswith("application/json")
    return response.status_code, response.json() if is_json else {}, response.text


@pytest.mark.parametrize(("method", "path", "body", "scope"), ENDPOINTS)
def test_each_endpoint_needs_its_scope(
    guarded: TestClient, method: str, path: str, body: object, scope: Scope
) -> None:
    status, error, _ = call(guarded, method, path, body, None)
    assert status == 401
    assert error["error"]["code"] == "unauthorized"  # type: ignore[index]
    assert error["error"]["details"][0]["loc"] == "authorization"  # type: ignore[index]
    response = guarded.request(method, path, json=body)
    assert response.headers["www-authenticate"] == "Bearer"

    assert call(guarded, method, path, body, generate_key())[0] == 401  # unknown key
    assert call(guarded, method, path, body, "Bearer")[0] == 401

    for other, key in KEYS.items():
        status, error, text = call(guarded, method, path, body, key)
        if other == scope or (other is Scope.ADVERTISING and (method, path) in ADVERTISING_ROUTES):
            assert status not in (401, 403), text
        else:
            assert status == 403, (other, text)
            assert error["error"]["code"] == "forbidden"  # type: ignore[index]
            assert f"only-{other.value}" in text
            assert scope.value in text
            assert key not in text


def test_a_key_with_every_scope_gets_through_and_the_rest_stays_open(guarded: TestClient) -> None:
    headers = {"authorization": f"Bearer {ALL_SCOPES}"}
    body = {"customer_id": "z1", "features": CHAMPION}
    assert guarded.post("/v1/assignments", json=body, headers=headers).status_code == 200
    assert guarded.get("/v1/customers/z1/segment", headers=headers).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert guarded.get(path).status_code == 200, path
    assert "authentication" not in guarded.get("/readyz").json()
    schema = guarded.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_an_advertising_key_sees_only_customers_who_opted_in(guarded: TestClient) -> None:
    """An ad platform's key is held to the advertising purpose whatever it asks for: pages,
    streams, feeds and lookups show opted-in customers only, and asking for more is a 403."""
    everything = {"authorization": f"Bearer {ALL_SCOPES}"}
    ads = {"authorization": f"Bearer {KEYS[Scope.ADVERTISING]}"}
    customers = [
        {"customer_id": "in", "features": CHAMPION, "consent": {"advertising": True}},
        {"customer_id": "out", "features": CHAMPION, "consent": {"advertising": False}},
        {"customer_id": "unsaid", "features": CHAMPION},
    ]
    response = guarded.post(
        "/v1/assignments/batch", json={"customers": customers}, headers=everything
    )
    assert response.status_code == 200, response.text

    page = guarded.get("/v1/segments/champions/members", headers=ads).json()
    assert (page["members"], page["purpose"]) == (["in"], "advertising")
    explicit = guarded.get(
        "/v1/segments/champions/members", params={"purpose": "advertising"}, headers=ads
    )
    assert explicit.json()["members"] == ["in"]
    streamed = guarded.get("/v1/segments/champions/members?format=ndjson", headers=ads)
    assert [orjson.loads(line)["customer_id"] for line in streamed.text.splitlines()] == ["in"]
    for path in ("/v1/changes", "/v1/segments/champions/changes"):
        feed = guarded.get(path, headers=ads).json()["changes"]
        assert {c["customer_id"] for c in feed} == {"in"}, path
    assert guarded.get("/v1/customers/in/segment", headers=ads).status_code == 200
    for customer in ("out", "unsaid"):
        lookup = guarded.get(f"/v1/customers/{customer}/segment", headers=ads)
        assert lookup.status_code == 404
        assert lookup.json()["error"]["code"] == "customer_not_found"  # as if unknown
    assert guarded.get("/v1/segments", headers=ads).status_code == 200

    # asking for the personalization audience is refused, naming the parameter
    for path in (
        "/v1/segments/champions/members",
        "/v1/segments/champions/members?format=csv",
        "/v1/changes",
        "/v1/customers/unsaid/segment",
    ):
        refused = guarded.get(path, params={"purpose": "personalization"}, headers=ads)
        assert refused.status_code == 403, path
        assert refused.json()["error"]["code"] == "forbidden"
        assert refused.json()["error"]["details"][0]["loc"] == "purpose"
    # a key with the full scopes still chooses, and defaults to the contract's audience
    full = guarded.get("/v1/segments/champions/members", headers=everything).json()
    assert full["members"] == ["in", "out", "unsaid"]
    # and the advertising scope opens nothing else
    assert guarded.get("/v1/customers/in/assignments", headers=ads).status_code == 403


def test_no_key_or_hash_appears_in_logs_or_bodies(
    guarded: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = generate_key()
    texts = []
    for key in (wrong, KEYS[Scope.READ], KEYS[Scope.ASSIGN]):
        response = guarded.post(
            "/v1/assignments",
            json={"customer_id": "x", "features": {"recency_days": "bad"}},
            headers={"authorization": f"Bearer {key}"},
        )
        texts.append(response.text)
    everything = "\n".join(texts) + "\n" + caplog.text
    for key in (wrong, KEYS[Scope.READ], KEYS[Scope.ASSIGN]):
        assert key not in everything
        assert key[3:20] not in everything


def test_the_open_quickstart_says_so(
    database_url: str, rfm_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clear_tables(database_url)
    caplog.set_level(logging.WARNING)
    with TestClient(create_app(make_settings(database_url, rfm_model_dir))) as client:
        ready = client.get("/readyz").json()
        assert ready["authentication"].startswith("DISABLED")
        body = {"customer_id": "o1", "features": CHAMPION}
        assert client.post("/v1/assignments", json=body).status_code == 200
    assert "NO API KEYS" in caplog.text


def test_no_keys_refuses_to_start_unless_anonymous_is_allowed(
    database_url: str, rfm_model_dir: Path
) -> None:
    settings = make_settings(database_url, rfm_model_dir, allow_anonymous=False)
    with pytest.raises(ConfigurationError, match="SEGMENTS_API_KEYS"):
        create_app(settings)


def test_a_malformed_key_entry_refuses_to_start(database_url: str, rfm_model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="entry 1"):
        create_app(make_settings(database_url, rfm_model_dir, api_keys="crm:nothex:read"))


def test_keys_create_prints_a_key_that_works(database_url: str, rfm_model_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["keys", "create", "--scopes", "read", "--name", "crm"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    key, entry = lines[0], lines[1]
    assert key.startswith("sk_")
    assert key not in entry
    assert entry.startswith("crm:")
    assert entry.endswith(":read")
    clear_tables(database_url)
    settings = make_settings(database_url, rfm_model_dir, api_keys=entry, allow_anonymous=False)
    with TestClient(create_app(settings)) as client:
        headers = {"authorization": f"Bearer {key}"}
        assert client.get("/v1/segments", headers=headers).status_code == 200
        assert client.get("/v1/segments/champions/members", headers=headers).status_code == 403
    bad = CliRunner().invoke(cli, ["keys", "create", "--scopes", "root"])
    assert bad.exit_code == 2
