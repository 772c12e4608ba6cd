"""Customer ids: one rule wherever they enter (HTTP bodies and paths, events, erasure, files).
Unicode NFC, so a composed and a decomposed é are one customer; no control, invisible format or
separator characters (a plain space is fine)."""

from __future__ import annotations

from datetime import date
from urllib.parse import quote

import pandas as pd
import pytest
from starlette.testclient import TestClient

from app.datafiles import normalise_ids
from tests.api.test_events import event, send

CHAMPION = {"recency_days": 3, "frequency": 7, "monetary": 4310.0}
COMPOSED = "caf\u00e9-7"
DECOMPOSED = "cafe\u0301-7"


def test_a_composed_and_a_decomposed_id_are_one_customer(client: TestClient) -> None:
    sent = client.post("/v1/assignments", json={"customer_id": DECOMPOSED, "features": CHAMPION})
    assert sent.status_code == 200, sent.text
    assert sent.json()["customer_id"] == COMPOSED  # stored, and answered, in NFC
    for spelling in (COMPOSED, DECOMPOSED):
        found = client.get(f"/v1/customers/{quote(spelling)}/segment")
        assert found.status_code == 200, found.text
        assert found.json()["customer_id"] == COMPOSED
    again = client.post("/v1/assignments", json={"customer_id": COMPOSED, "features": CHAMPION})
    assert again.status_code == 200
    history = client.get(f"/v1/customers/{quote(DECOMPOSED)}/assignments").json()
    assert len(history["assignments"]) == 2
    # events and erasure take the same rule
    body = send(client, event("e1", DECOMPOSED, date(2024, 6, 1), 20.0))
    assert [c["customer_id"] for c in body["customers"]] == [COMPOSED]
    assert client.delete(f"/v1/customers/{quote(DECOMPOSED)}").status_code == 204
    assert client.get(f"/v1/customers/{quote(COMPOSED)}/segment").status_code == 404
    # and files (training, offline scoring, ingest) read ids the same way
    assert normalise_ids(pd.Series([DECOMPOSED])).tolist() == [COMPOSED]


@pytest.mark.parametrize(
    "customer_id",
    [
        "nel\u0085x",  # C1 control (U+0085, next line)
        "csi\u009bx",  # C1 control
        "line\u2028x",  # line separator
        "para\u2029x",  # paragraph separator
        "zero\u200bwidth",  # format: zero-width space
        "bidi\u202eevil",  # format: right-to-left override
        "no\u00a0break",  # a space that is not a space
    ],
)
def test_invisible_and_separator_characters_are_refused_everywhere(
    client: TestClient, customer_id: str
) -> None:
    single = client.post("/v1/assignments", json={"customer_id": customer_id, "features": CHAMPION})
    assert single.status_code == 422
    assert single.json()["error"]["details"][0]["loc"] == "customer_id"
    batch = client.post(
        "/v1/assignments/batch",
        json={
            "customers": [
                {"customer_id": "ok", "features": CHAMPION},
                {"customer_id": customer_id, "features": CHAMPION},
            ]
        },
    )
    assert batch.status_code == 422
    assert batch.json()["error"]["details"][0]["loc"] == "customers[1].customer_id"
    events = client.post(
        "/v1/events",
        json={
            "events": [
                {
                    "event_id": "x",
                    "customer_id": customer_id,
                    "occurred_at": "2024-06-01T10:00:00Z",
                    "amount": 5.0,
                    "type": "order",
                }
            ]
        },
    )
    assert events.status_code == 422
    assert events.json()["error"]["details"][0]["loc"] == "events[0].customer_id"
    lookup = client.get(f"/v1/customers/{quote(customer_id)}/segment")
    assert lookup.status_code == 422
    erase = client.post("/v1/erasures", json={"customer_ids": [customer_id]})
    assert erase.status_code == 422


def test_a_plain_space_and_other_scripts_are_fine(client: TestClient) -> None:
    for customer_id in ("ACME 123", "客户-42", "Ωmega", "ïd"):
        sent = client.post(
            "/v1/assignments", json={"customer_id": customer_id, "features": CHAMPION}
        )
        assert sent.status_code == 200, (customer_id, sent.text)
