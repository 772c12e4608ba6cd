"""The CLI and HTTP are two doors to one implementation: the same request gets the same answer
(an audience export, the activation gate, a model comparison, a refused segment)."""

from __future__ import annotations

import json
from pathlib import Path

from starlette.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}
LAPSED = {"recency_days": 300, "frequency": 1, "monetary": 30.0}


def segments(database_url: str, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout, and all the output with white space folded (rich wraps lines)."""
    result = CliRunner().invoke(cli, list(args), env={"DATABASE_URL": database_url})
    return result.exit_code, result.stdout, " ".join(result.output.split())


def _customers(client: TestClient) -> None:
    body = {
        "customers": [
            {
                "customer_id": f"c{i:03d}",
                "features": CHAMPION if i % 2 else LAPSED,
                "email": f"Person{i}@Example.com",
                # a third opted in to advertising, a third objected to it, a third never said
                "consent": {"advertising": [True, False, None][i % 3]},
            }
            for i in range(90)
        ]
    }
    assert client.post("/v1/assignments/batch", json=body).status_code == 200


def test_an_export_is_the_same_file_from_the_cli_and_http(
    client: TestClient, database_url: str, tmp_path: Path
) -> None:
    _customers(client)
    for purpose, identifiers, suffix in [
        ("advertising", "google", "csv"),
        ("personalization", "none", "ndjson"),
    ]:
        out = tmp_path / f"champions-{purpose}.{suffix}"
        code, cursor, output = segments(
            database_url,
            "export",
            "--segment",
            "champions",
            "--out",
            str(out),
            "--purpose",
            purpose,
            "--identifiers",
            identifiers,
        )
        assert code == 0, output
        streamed = client.get(
            "/v1/segments/champions/members",
            params={"format": suffix, "purpose": purpose, "identifiers": identifiers},
        )
        assert streamed.status_code == 200
        assert out.read_bytes() == streamed.content
        # both positions stand past every change so far (each names its own snapshot)
        for position in (cursor.strip(), streamed.headers["segments-feed-cursor"]):
            ahead = client.get("/v1/changes", params={"since": position, "purpose": purpose})
            assert ahead.status_code == 200, ahead.text
            assert ahead.json()["changes"] == []
        members = len(streamed.content.splitlines()) - (suffix == "csv")
        assert members == (15 if purpose == "advertising" else 45)


def test_a_segment_the_active_model_lacks_is_refused_by_both(
    client: TestClient, database_url: str, rfm_model_b: Path, tmp_path: Path
) -> None:
    """A key only the rolled-back model had: neither door exports it, in the same words."""
    _customers(client)
    assert segments(database_url, "models", "register", str(rfm_model_b))[0] == 0
    assert client.post("/v1/models/test-rfm-k5/activate").status_code == 200
    k5_keys = {s["key"] for s in client.get("/v1/segments").json()["segments"]}
    assert client.post("/v1/models/rollback").status_code == 200
    k4_keys = {s["key"] for s in client.get("/v1/segments").json()["segments"]}
    gone = sorted(k5_keys - k4_keys)[0]
    refused = client.get(f"/v1/segments/{gone}/members", params={"format": "csv"})
    assert refused.status_code == 404
    message = refused.json()["error"]["message"]
    code, _, output = segments(
        database_url, "export", "--segment", gone, "--out", str(tmp_path / "gone.csv")
    )
    assert code == 2
    assert message in output
    assert not (tmp_path / "gone.csv").exists()


def test_the_activation_gate_and_comparison_agree(
    client: TestClient, database_url: str, rfm_model_b: Path, tmp_path: Path
) -> None:
    _customers(client)
    assert segments(database_url, "models", "register", str(rfm_model_b))[0] == 0
    over_http = client.get("/v1/models/test-rfm-k5/comparison").json()
    report = tmp_path / "report.json"
    code, _, output = segments(
        database_url, "models", "compare", "active", "test-rfm-k5", "--json", str(report)
    )
    assert code == 0, output
    assert json.loads(report.read_text()) == over_http
    assert over_http["agreement"] < 1  # a k=4 and a k=5 model cannot agree on everyone

    gated = client.post("/v1/models/test-rfm-k5/activate", params={"min_agreement": 1})
    assert gated.status_code == 409
    refusal = gated.json()["error"]["message"]
    code, _, output = segments(
        database_url, "models", "activate", "test-rfm-k5", "--min-agreement", "1"
    )
    assert code == 1
    assert refusal in output  # the same words: one gate, measured against the registry's active
    assert client.get("/v1/models").json()["active"] == "test-rfm-k4"
