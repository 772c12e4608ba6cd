"""The OpenAPI document: valid, naming every status and error code the routes answer, and the
served model's features; tests/api/test_generated_client.py uses it to generate a client."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from app.api.openapi import ERRORS
from app.auth.keys import Scope, key_config_line
from app.main import create_app
from app.settings import PROJECT_ROOT
from tests.api.test_assignments import CHAMPION
from tests.auth.test_guard import KEYS
from tests.conftest import clear_tables, make_settings
from tests.lifecycle.test_registry import segments_cli


def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_the_served_document_and_the_static_one_are_valid_openapi(client: TestClient) -> None:
    served = document(client)
    validate(served)
    validate(client.app.openapi())  # type: ignore[attr-defined]
    # the hand-read bodies are in components, where every reference points
    schemas = served["components"]["schemas"]
    for name in ("CustomerIn", "ConsentIn", "BatchIn", "EventIn", "EventsIn", "ErasureIn"):
        assert name in schemas
    text = str(served)
    assert "#/$defs/" not in text
    for ref in re.findall(r"'\$ref': '#/components/schemas/([^']+)'", text):
        assert ref in schemas, ref
    body = served["paths"]["/v1/assignments"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/CustomerIn"}


def test_features_are_the_served_models_and_change_with_it(
    client: TestClient, database_url: str, bank_model_dir: Path
) -> None:
    features = document(client)["components"]["schemas"]["Features"]
    assert features["required"] == ["recency_days", "frequency", "monetary"]
    assert features["additionalProperties"] is False
    active = {f["name"]: f for f in client.get("/v1/models/active").json()["features"]}
    for name, schema in features["properties"].items():
        assert schema["type"] == active[name]["type"]
        assert schema["type"] in {"number", "integer"}
        assert schema["minimum"] == active[name]["minimum"]
        assert schema["maximum"] == active[name]["maximum"]
    # the examples are valid requests for this model
    example = document(client)["paths"]["/v1/assignments"]["post"]["requestBody"]["content"]
    body = example["application/json"]["example"]
    assert body["features"] == features["examples"][0]
    assert client.post("/v1/assignments", json=body).status_code == 200
    batch = document(client)["paths"]["/v1/assignments/batch"]["post"]["requestBody"]
    response = client.post(
        "/v1/assignments/batch", json=batch["content"]["application/json"]["example"]
    )
    assert response.status_code == 200, response.text

    # another model, with other features: the document follows the switch, no restart
    assert segments_cli(database_url, "models", "register", str(bank_model_dir))[0] == 0
    switched = client.post("/v1/models/test-bank-k5/activate", params={"allow_schema_change": True})
    assert switched.status_code == 200, switched.text
    after = document(client)
    validate(after)
    features = after["components"]["schemas"]["Features"]
    assert set(features["required"]) == {"age", "balance", "job", "marital", "education", "housing"}
    assert features["properties"]["age"]["type"] in {"number", "integer"}
    assert features["properties"]["job"]["type"] == "string"
    assert "test-bank-k5" in features["description"]
    body = after["paths"]["/v1/assignments"]["post"]["requestBody"]["content"]["application/json"]
    assert client.post("/v1/assignments", json=body["example"]).status_code == 200


CODE = re.compile(r"[a-z]+(_[a-z]+)*")
STATUS_LINE = re.compile(r"[1-5][0-9]{2} [A-Z]")


def _text(node: ast.AST | None) -> str:
    """The string a node is, if it is a string constant; '' otherwise."""
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""


def _error_codes_in_source() -> set[str]:
    """Every error code the app can answer, read from its source: the codes AppError subclasses
    pass up (app/errors.py, also from tables of tuples), error bodies written directly, the
    framework errors' table (app/api/errors.py) and the connection guard's answers (a status
    line, then the code)."""
    codes: set[str] = set()
    errors, api_errors = (
        PROJECT_ROOT / "app" / "errors.py",
        PROJECT_ROOT / "app" / "api" / "errors.py",
    )
    for path in (PROJECT_ROOT / "app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            found: list[str] = []
            if isinstance(node, ast.Call):
                args = [_text(a) for a in node.args] + ["", ""]
                name = getattr(node.func, "attr", getattr(node.func, "id", ""))
                if path == errors and name == "__init__":
                    found += args
                if name == "error_body" or STATUS_LINE.match(args[0]):
                    found.append(args[1] if STATUS_LINE.match(args[0]) else args[0])
            elif isinstance(node, ast.Tuple) and path == errors and node.elts:
                found.append(_text(node.elts[0]))
            elif isinstance(node, ast.Dict) and path == api_errors:
                found += [_text(v) for v in node.values]  # {404: "not_found", ...}
            codes.update(c for c in found if CODE.fullmatch(c))
    # AppError's default (every subclass sets its own) and the StoreReason words (not codes)
    return codes - {"bad_request", "unavailable", "timeout", "lock"}


def test_every_error_code_is_listed(client: TestClient) -> None:
    codes = _error_codes_in_source()
    assert {
        "customer_not_found",
        "model_refused",
        "too_many_exports",
        "not_ready",
        "store_timeout",
        "request_timeout",
        "busy",
    } <= codes
    assert codes - {"http_error"} <= set(ERRORS), codes - set(ERRORS)
    described = document(client)["components"]["schemas"]["ErrorDetailOut"]["properties"]["code"]
    for code in ERRORS:
        assert f"`{code}`" in described["description"]
    docs = (PROJECT_ROOT / "docs" / "api.md").read_text()
    for code in ERRORS:
        assert f"`{code}`" in docs, code


@pytest.fixture
def guarded(database_url: str, rfm_model_dir: Path) -> Iterator[TestClient]:
    """A service with a key per scope, small limits and one export slot."""
    clear_tables(database_url)
    entries = "\n".join(key_config_line(s.value, KEYS[s], [s]) for s in Scope)
    settings = make_settings(
        database_url,
        rfm_model_dir,
        api_keys=entries,
        allow_anonymous=False,
        max_batch=3,
        max_body_bytes=4096,
        max_exports=1,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _operation(client: TestClient, method: str, path: str) -> dict[str, Any]:
    """The document's operation for `method path`: a literal path before a template, as the
    routes are declared (/v1/models/active before /v1/models/{version})."""
    paths = document(client)["paths"]
    path = path.split("?")[0]
    for template in sorted(paths, key=lambda t: t.count("{")):
        pattern = "^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in paths[template]:
            operation: dict[str, Any] = paths[template][method.lower()]
            return operation
    raise AssertionError(f"no operation serves {method} {path}")


def test_every_status_the_routes_answer_is_documented(
    guarded: TestClient, database_url: str, bank_model_dir: Path
) -> None:
    """Provoke every error the /v1 routes have, and check that the operation documents the
    status answered, with its code."""
    client = guarded

    def auth(scope: Scope) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEYS[scope]}"}

    big = {"customers": [{"customer_id": "x" * 100, "features": CHAMPION}] * 60}
    customers = {"customers": [{"customer_id": f"c{i}", "features": CHAMPION} for i in range(4)]}
    requests: list[tuple[TestClient, str, str, dict[str, Any]]] = [
        (client, "POST", "/v1/assignments", {"json": {"customer_id": "a", "features": CHAMPION}}),
        (
            client,
            "POST",
            "/v1/assignments",
            {"json": {"customer_id": "a"}, "headers": auth(Scope.ASSIGN)},
        ),
        (client, "POST", "/v1/assignments", {"json": {}, "headers": auth(Scope.READ)}),
        (
            client,
            "POST",
            "/v1/assignments/batch",
            {"json": customers, "headers": auth(Scope.ASSIGN)},
        ),
        (client, "POST", "/v1/assignments/batch", {"json": big, "headers": auth(Scope.ASSIGN)}),
        (client, "GET", "/v1/customers/nobody/segment", {"headers": auth(Scope.READ)}),
        (client, "GET", "/v1/customers/nobody/assignments", {"headers": auth(Scope.READ)}),
        (client, "GET", "/v1/segments/nope/members", {"headers": auth(Scope.AUDIENCE)}),
        (client, "GET", "/v1/segments/nope/changes", {"headers": auth(Scope.AUDIENCE)}),
        (client, "GET", "/v1/changes?since=%25%25", {"headers": auth(Scope.AUDIENCE)}),
        (client, "DELETE", "/v1/customers/nobody", {"headers": auth(Scope.ADMIN)}),
        (client, "POST", "/v1/customers/never-erased/restore", {"headers": auth(Scope.ADMIN)}),
        (
            client,
            "POST",
            "/v1/erasures",
            {"json": {"customer_ids": []}, "headers": auth(Scope.ADMIN)},
        ),
        (client, "GET", "/v1/models/nope", {"headers": auth(Scope.READ)}),
        (client, "GET", "/v1/models/nope/comparison", {"headers": auth(Scope.READ)}),
        (client, "GET", "/v1/models/test-rfm-k4/comparison", {"headers": auth(Scope.READ)}),
        (client, "POST", "/v1/models/nope/activate", {"headers": auth(Scope.ADMIN)}),
        (client, "POST", "/v1/models/rollback", {"headers": auth(Scope.ADMIN)}),
        (client, "POST", "/v1/models/nope/shadow", {"headers": auth(Scope.ADMIN)}),
        (
            client,
            "POST",
            "/v1/events",
            {"json": {"events": [{}] * 4}, "headers": auth(Scope.ASSIGN)},
        ),
    ]
    observed: set[tuple[str, str, int, str]] = set()

    def record(app: TestClient, method: str, path: str, response: Any) -> None:
        code = response.json()["error"]["code"] if response.status_code >= 400 else ""
        operation = _operation(app, method, path)
        documented = operation["responses"]
        status = str(response.status_code)
        assert status in documented, (method, path, status, response.text)
        if code:
            assert f"`{code}`" in documented[status]["description"], (method, path, code)
            schema = documented[status]["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith("/ErrorOut")
        observed.add((method, path, response.status_code, code))

    for app, method, path, options in requests:
        record(app, method, path, app.request(method, path, **options))
    # the one export slot taken by a stream still open: the next export is a 429
    members = "/v1/segments/champions/members?format=csv"
    with client.stream("GET", members, headers=auth(Scope.AUDIENCE)) as first:
        assert first.status_code == 200
        record(client, "GET", members, client.get(members, headers=auth(Scope.AUDIENCE)))
    # a model without RFM features takes no events: 409
    assert segments_cli(database_url, "models", "register", str(bank_model_dir))[0] == 0
    activate = "/v1/models/test-bank-k5/activate?allow_schema_change=true"
    record(client, "POST", activate, client.post(activate, headers=auth(Scope.ADMIN)))
    events = client.post(
        "/v1/events", json={"events": [{"event_id": "e"}]}, headers=auth(Scope.ASSIGN)
    )
    record(client, "POST", "/v1/events", events)

    statuses = {status for _, _, status, _ in observed}
    assert {200, 401, 403, 404, 409, 413, 422, 429} <= statuses, statuses
    codes = {code for *_, code in observed}
    assert {
        "unauthorized",
        "forbidden",
        "customer_not_found",
        "segment_not_found",
        "model_not_found",
        "not_erased",
        "model_refused",
        "events_unsupported",
        "batch_too_large",
        "payload_too_large",
        "invalid_input",
        "too_many_exports",
    } <= codes, codes


def test_streamed_responses_carry_schemas_not_descriptions(client: TestClient) -> None:
    """OpenAPI 3.1's Media Type Object has schema, example(s) and encoding, no description."""
    served = document(client)
    for path, operations in served["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                assert response.get("description"), (path, method, status)
                for media, content in response.get("content", {}).items():
                    assert set(content) <= {"schema", "example", "examples", "encoding"}, (
                        path,
                        media,
                    )
    members = served["paths"]["/v1/segments/{key}/members"]["get"]["responses"]["200"]
    assert set(members["content"]) == {"application/json", "application/x-ndjson", "text/csv"}
    assert "Segments-Feed-Cursor" in members["headers"]
