"""Assigning customers over HTTP: single, batch, persisted or not, and every kind of bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from app.main import create_app
from tests.conftest import clear_tables, count_rows, make_settings, metric_value

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}
LAPSED = {"recency_days": 300, "frequency": 1, "monetary": 20.0}


def assert_error(body: dict[str, Any], code: str, *locs: str) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert error["message"].endswith(".")
    assert len(error["message"]) > 20
    found = [d["loc"] for d in error["details"]]
    for loc in locs:
        assert loc in found, f"{loc} not in {found}"
    assert all(d["problem"] for d in error["details"])


def test_single_assignment_is_stored_and_shaped_as_the_contract(
    client: TestClient, database_url: str
) -> None:
    response = client.post("/v1/assignments", json={"customer_id": "12347", "features": CHAMPION})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "customer_id",
        "segment",
        "model_version",
        "distance",
        "confidence",
        "assigned_at",
    }
    assert body["customer_id"] == "12347"
    assert body["model_version"] == "test-rfm-k4"
    assert set(body["segment"]) == {"id", "key", "name"}
    assert body["segment"]["key"] == "champions"
    assert body["distance"] >= 0
    assert 0 <= body["confidence"] <= 1
    assert body["assigned_at"].endswith("Z")
    datetime.fromisoformat(body["assigned_at"])
    assert count_rows(database_url, "assignments") == 1

    current = client.get("/v1/customers/12347/segment")
    assert current.status_code == 200
    assert current.json() == body


def test_persist_false_scores_without_storing(client: TestClient, database_url: str) -> None:
    response = client.post(
        "/v1/assignments?persist=false", json={"customer_id": "x1", "features": LAPSED}
    )
    assert response.status_code == 200
    assert response.json()["segment"]["key"] != "champions"
    assert count_rows(database_url, "assignments") == 0
    assert client.get("/v1/customers/x1/segment").status_code == 404


def test_batch_keeps_request_order_and_stores_everything(
    client: TestClient, database_url: str
) -> None:
    customers = [
        {"customer_id": f"c{i}", "features": CHAMPION if i % 2 else LAPSED} for i in range(50)
    ]
    response = client.post("/v1/assignments/batch", json={"customers": customers})
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == "test-rfm-k4"
    assert [a["customer_id"] for a in body["assignments"]] == [f"c{i}" for i in range(50)]
    keys = {a["segment"]["key"] for a in body["assignments"][1::2]}
    assert keys == {"champions"}
    assert count_rows(database_url, "assignments") == 50
    assert count_rows(database_url, "memberships") == 50


def test_history_is_newest_first_and_membership_follows_the_latest(client: TestClient) -> None:
    client.post("/v1/assignments", json={"customer_id": "h", "features": LAPSED})
    client.post("/v1/assignments", json={"customer_id": "h", "features": CHAMPION})
    history = client.get("/v1/customers/h/assignments").json()["assignments"]
    assert next(a["segment"]["key"] for a in history) == "champions"
    assert len(history) == 2
    assert history[0]["assigned_at"] >= history[1]["assigned_at"]
    assert client.get("/v1/customers/h/segment").json()["segment"]["key"] == "champions"


def test_erasure_removes_history_and_membership(client: TestClient, database_url: str) -> None:
    client.post("/v1/assignments", json={"customer_id": "gone", "features": LAPSED})
    client.post("/v1/assignments", json={"customer_id": "kept", "features": LAPSED})
    assert client.delete("/v1/customers/gone").status_code == 204
    assert client.get("/v1/customers/gone/segment").status_code == 404
    assert client.get("/v1/customers/gone/assignments").status_code == 404
    assert_error(client.delete("/v1/customers/gone").json(), "customer_not_found", "customer_id")
    assert count_rows(database_url, "assignments") == 1
    assert client.get("/v1/customers/kept/segment").status_code == 200


def test_unknown_customer_is_404_in_the_contract_shape(client: TestClient) -> None:
    response = client.get("/v1/customers/nobody/segment")
    assert response.status_code == 404
    assert_error(response.json(), "customer_not_found", "customer_id")


def test_each_kind_of_bad_feature_is_named(client: TestClient, database_url: str) -> None:
    cases = {
        "missing": ({"recency_days": 1, "frequency": 2}, "features.monetary"),
        "extra": ({**CHAMPION, "age": 40}, "features.age"),
        "string": ({**CHAMPION, "monetary": "12"}, "features.monetary"),
        "boolean": ({**CHAMPION, "frequency": True}, "features.frequency"),
        "not integer": ({**CHAMPION, "frequency": 2.5}, "features.frequency"),
        "out of range": ({**CHAMPION, "recency_days": -1}, "features.recency_days"),
        "null": ({**CHAMPION, "monetary": None}, "features.monetary"),
        "list": ({**CHAMPION, "monetary": [1]}, "features.monetary"),
    }
    for label, (features, loc) in cases.items():
        response = client.post("/v1/assignments", json={"customer_id": "bad", "features": features})
        assert response.status_code == 422, label
        assert_error(response.json(), "invalid_input", loc)
    assert count_rows(database_url, "assignments") == 0


def test_non_finite_numbers_are_refused(client: TestClient) -> None:
    for token in ("NaN", "Infinity", "-Infinity"):
        raw = f'{{"customer_id": "n", "features": {{"recency_days": 1, "frequency": 2, "monetary": {token}}}}}'
        response = client.post(
            "/v1/assignments", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, token
        assert_error(response.json(), "invalid_input", "features.monetary")


def test_malformed_json_and_bad_customer_id(client: TestClient) -> None:
    response = client.post(
        "/v1/assignments", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"
    too_long = client.post("/v1/assignments", json={"customer_id": "x" * 129, "features": CHAMPION})
    assert too_long.status_code == 422
    assert_error(too_long.json(), "invalid_input", "customer_id")
    empty = client.post("/v1/assignments", json={"customer_id": "", "features": CHAMPION})
    assert_error(empty.json(), "invalid_input", "customer_id")


def test_bad_batch_lists_every_bad_row_and_stores_nothing(
    client: TestClient, database_url: str
) -> None:
    customers = [{"customer_id": f"ok{i}", "features": CHAMPION} for i in range(20)]
    customers[3]["features"] = {**CHAMPION, "monetary": -5}
    customers[11]["features"] = {"recency_days": 3}
    customers[19]["features"] = {**CHAMPION, "colour": "red"}
    response = client.post("/v1/assignments/batch", json={"customers": customers})
    assert response.status_code == 422
    body = response.json()
    assert_error(
        body,
        "invalid_input",
        "customers[3].features.monetary",
        "customers[11].features.frequency",
        "customers[11].features.monetary",
        "customers[19].features.colour",
    )
    assert body["error"]["message"].startswith("3 of the batch's 20 customers are invalid")
    assert count_rows(database_url, "assignments") == 0
    assert count_rows(database_url, "memberships") == 0


def test_batch_structure_errors_name_the_row(client: TestClient) -> None:
    response = client.post(
        "/v1/assignments/batch",
        json={"customers": [{"customer_id": "a", "features": CHAMPION}, {"features": {}}]},
    )
    assert response.status_code == 422
    assert_error(response.json(), "invalid_input", "customers[1].customer_id")
    empty = client.post("/v1/assignments/batch", json={"customers": []})
    assert_error(empty.json(), "invalid_input", "customers")


def test_too_many_rows_or_bytes_is_413_and_stores_nothing(
    database_url: str, rfm_model_dir: Path
) -> None:
    clear_tables(database_url)
    settings = make_settings(database_url, rfm_model_dir, max_batch=5, max_body_bytes=4096)
    with TestClient(create_app(settings)) as small:
        six = [{"customer_id": f"c{i}", "features": CHAMPION} for i in range(6)]
        response = small.post("/v1/assignments/batch", json={"customers": six})
        assert response.status_code == 413
        assert_error(response.json(), "batch_too_large", "customers")

        big = [{"customer_id": "x" * 100 + str(i), "features": CHAMPION} for i in range(5)]
        padded = {"customers": big, "padding": "y" * 5000}
        response = small.post("/v1/assignments/batch", json=padded)
        assert response.status_code == 413
        assert_error(response.json(), "payload_too_large", "body")

        def chunks() -> Iterator[
            bytes
        ]:  # no Content-Length: the limit must still hold while streaming
            yield b'{"customers": ['
            for _ in range(100):
                yield b'{"customer_id": "z", "features": {"recency_days": 1, "frequency": 2, "monetary": 3}},'
            yield b"]}"

        streamed = small.post(
            "/v1/assignments/batch", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "payload_too_large"
    assert count_rows(database_url, "assignments") == 0


def test_unknown_category_is_accepted_and_counted(database_url: str, bank_model_dir: Path) -> None:
    clear_tables(database_url)
    with TestClient(create_app(make_settings(database_url, bank_model_dir))) as bank:
        active = bank.get("/v1/models/active").json()
        job = next(f for f in active["features"] if f["name"] == "job")
        assert job["type"] == "category"
        assert "management" in job["categories"]
        before = metric_value(
            bank.get("/metrics").text, "segment_unknown_categories_total", feature="job"
        )
        features = {
            "age": 41,
            "balance": 1200,
            "job": "astronaut",
            "marital": "married",
            "education": "tertiary",
            "housing": "no",
        }
        response = bank.post("/v1/assignments", json={"customer_id": "b1", "features": features})
        assert response.status_code == 200
        after = metric_value(
            bank.get("/metrics").text, "segment_unknown_categories_total", feature="job"
        )
        assert after == before + 1
        wrong_type = bank.post(
            "/v1/assignments", json={"customer_id": "b2", "features": {**features, "job": 7}}
        )
        assert_error(wrong_type.json(), "invalid_input", "features.job")


def test_unknown_route_and_method_use_the_error_body(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here").json(), "not_found")
    response = client.put("/v1/assignments", json={})
    assert response.status_code == 405
    assert_error(response.json(), "method_not_allowed")


def test_ids_that_could_not_be_read_back_are_refused(client: TestClient, database_url: str) -> None:
    # a final newline once slipped past a `$`; a lone surrogate comes as a JSON escape
    for bad_id in ("a/b", "x\u0000y", "tab\there", "x" * 129, "end\n", "x" * 128 + "\n"):
        for path, body, loc in (
            ("/v1/assignments", {"customer_id": bad_id, "features": CHAMPION}, "customer_id"),
            (
                "/v1/assignments/batch",
                {"customers": [{"customer_id": bad_id, "features": CHAMPION}]},
                "customers[0].customer_id",
            ),
        ):
            response = client.post(path, json=body)
            assert response.status_code == 422, (path, bad_id)
            assert_error(response.json(), "invalid_input", loc)
    features = json.dumps(CHAMPION)
    for path, text in (
        ("/v1/assignments", f'{{"customer_id": "a\\ud800", "features": {features}}}'),
        (
            "/v1/assignments/batch",
            f'{{"customers": [{{"customer_id": "a\\ud800", "features": {features}}}]}}',
        ),
    ):
        response = client.post(path, content=text, headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.text)
    batch = [
        {"customer_id": "fine", "features": CHAMPION},
        {"customer_id": "no/slash", "features": CHAMPION},
    ]
    response = client.post("/v1/assignments/batch", json={"customers": batch})
    assert_error(response.json(), "invalid_input", "customers[1].customer_id")
    assert client.get("/v1/customers/x%00y/segment").status_code == 422
    assert client.delete("/v1/customers/x%00y").status_code == 422
    # any other text is a fine id, and reads back through the URL
    odd = "ünïcode id with spaces & ?query#chars"
    assert (
        client.post("/v1/assignments", json={"customer_id": odd, "features": CHAMPION}).status_code
        == 200
    )
    from urllib.parse import quote

    assert client.get(f"/v1/customers/{quote(odd, safe='')}/segment").json()["customer_id"] == odd
    assert count_rows(database_url, "assignments") == 1


def test_numbers_beyond_float_and_bodies_beyond_reason(client: TestClient) -> None:
    huge = (
        '{"customer_id": "h", "features": {"recency_days": 1, "frequency": 1%s, "monetary": 3}}'
        % ("0" * 400)
    )
    response = client.post(
        "/v1/assignments", content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert_error(response.json(), "invalid_input", "features.frequency")

    deep = "[" * 100_000 + "]" * 100_000
    response = client.post(
        "/v1/assignments", content=deep, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert_error(response.json(), "invalid_input", "body")

    truncated = client.post(
        "/v1/assignments", content=b'{"a":', headers={"content-type": "application/json"}
    )
    assert_error(truncated.json(), "invalid_input", "body")
    assert_error(client.post("/v1/assignments", content=b"").json(), "invalid_input", "body")
    not_object = client.post("/v1/assignments", json=[1, 2])
    assert_error(not_object.json(), "invalid_input", "body")
    features_not_object = client.post("/v1/assignments", json={"customer_id": "a", "features": [1]})
    assert_error(features_not_object.json(), "invalid_input", "features")


def test_batch_envelope_errors(client: TestClient) -> None:
    assert_error(
        client.post("/v1/assignments/batch", json={"rows": []}).json(), "invalid_input", "customers"
    )
    extra = client.post(
        "/v1/assignments/batch",
        json={"customers": [{"customer_id": "a", "features": CHAMPION}], "x": 1},
    )
    assert_error(extra.json(), "invalid_input", "x")
    unknown_field = client.post(
        "/v1/assignments/batch",
        json={"customers": [{"customer_id": "a", "features": CHAMPION, "email": "e"}]},
    )
    assert_error(unknown_field.json(), "invalid_input", "customers[0].email")


def test_readiness_names_an_unmigrated_database(
    empty_database_url: str, rfm_model_dir: Path
) -> None:
    with TestClient(create_app(make_settings(empty_database_url, rfm_model_dir))) as fresh:
        ready = fresh.get("/readyz")
        assert ready.status_code == 503
        assert "segments migrate" in ready.json()["error"]["details"][0]["problem"]
        assert fresh.head("/healthz").status_code == 200


def test_responses_are_valid_json_in_the_documented_shape(client: TestClient) -> None:
    """The assignment routes write their JSON by hand, for speed: it must stay exact."""
    from app.api.schemas import AssignmentOut, BatchOut

    awkward = ['quote " inside', "back\\slash", "ünïcødé 🙂", "<script>", "comma, and: colon"]
    batch = [{"customer_id": c, "features": CHAMPION} for c in awkward]
    response = client.post("/v1/assignments/batch?persist=false", json={"customers": batch})
    assert response.headers["content-type"] == "application/json"
    body = BatchOut.model_validate_json(response.content)
    assert [a.customer_id for a in body.assignments] == awkward
    assert all(a.segment.key == "champions" and a.segment.name for a in body.assignments)
    single = client.post(
        "/v1/assignments?persist=false", json={"customer_id": awkward[0], "features": LAPSED}
    )
    assert AssignmentOut.model_validate_json(single.content).customer_id == awkward[0]
