"""The model registry over HTTP and the CLI, on the real store: register, list, activate,
roll back, refuse bad versions, follow another process's activation, compare, shadow."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli
from app.cli.serve import _activate_at_launch
from app.main import create_app
from app.scoring.artifact import load_artifact
from tests.conftest import clear_tables, make_settings, metric_value

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}
LAPSED = {"recency_days": 300, "frequency": 1, "monetary": 30.0}


def segments_cli(database_url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"DATABASE_URL": database_url})
    return result.exit_code, result.output


@pytest.fixture
def app_a(database_url: str, rfm_model_dir: Path) -> Iterator[TestClient]:
    """A service started on test-rfm-k4 over an empty store and registry."""
    clear_tables(database_url)
    settings = make_settings(database_url, rfm_model_dir, model_poll_seconds=0.2)
    with TestClient(create_app(settings)) as client:
        yield client


def assign(client: TestClient, customer: str, features: dict[str, float]) -> dict[str, object]:
    response = client.post("/v1/assignments", json={"customer_id": customer, "features": features})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_first_start_registers_and_activates_the_configured_model(app_a: TestClient) -> None:
    listed = app_a.get("/v1/models").json()
    assert listed["active"] == listed["served"] == "test-rfm-k4"
    assert [m["status"] for m in listed["models"]] == ["active"]
    assert listed["models"][0]["activated_at"] is not None
    active = app_a.get("/v1/models/active").json()
    assert active["status"] == "active"
    assert active["active"] is True
    assert {f["name"] for f in active["features"]} == {"recency_days", "frequency", "monetary"}


def test_register_activate_rollback_without_restart(
    app_a: TestClient, database_url: str, rfm_model_b: Path
) -> None:
    code, output = segments_cli(database_url, "models", "register", str(rfm_model_b))
    assert code == 0, output
    assert "test-rfm-k5" in output
    # registering the same artifact again changes nothing
    assert segments_cli(database_url, "models", "register", str(rfm_model_b))[0] == 0
    statuses = {m["version"]: m["status"] for m in app_a.get("/v1/models").json()["models"]}
    assert statuses == {"test-rfm-k4": "active", "test-rfm-k5": "candidate"}
    assert assign(app_a, "c1", CHAMPION)["model_version"] == "test-rfm-k4"

    response = app_a.post("/v1/models/test-rfm-k5/activate")
    assert response.status_code == 200, response.text
    assert response.json()["previous"] == "test-rfm-k4"
    assert response.json()["active"]["version"] == "test-rfm-k5"
    assert assign(app_a, "c2", CHAMPION)["model_version"] == "test-rfm-k5"
    segments = app_a.get("/v1/segments").json()
    assert segments["model_version"] == "test-rfm-k5"
    assert len(segments["segments"]) == 5
    exposition = app_a.get("/metrics").text
    assert metric_value(exposition, "segment_model_info", version="test-rfm-k5") == 1
    assert metric_value(exposition, "segment_model_info", version="test-rfm-k4") == 0
    statuses = {m["version"]: m["status"] for m in app_a.get("/v1/models").json()["models"]}
    assert statuses == {"test-rfm-k4": "retired", "test-rfm-k5": "active"}

    rolled = app_a.post("/v1/models/rollback")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["active"]["version"] == "test-rfm-k4"
    assert rolled.json()["previous"] == "test-rfm-k5"
    assert assign(app_a, "c3", CHAMPION)["model_version"] == "test-rfm-k4"
    # history keeps the version that produced each assignment
    history = app_a.get("/v1/customers/c2/assignments").json()["assignments"]
    assert history[0]["model_version"] == "test-rfm-k5"

    code, output = segments_cli(database_url, "models", "list")
    assert code == 0, output
    assert "retired" in output
    assert "active" in output


def test_unknown_and_refused_versions_change_nothing(
    app_a: TestClient,
    database_url: str,
    rfm_model_b: Path,
    bank_model_dir: Path,
    tmp_path: Path,
) -> None:
    missing = app_a.post("/v1/models/nope/activate")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert missing.json()["error"]["details"][0]["loc"] == "version"

    # another model's features would break every client: refused unless asked for
    assert segments_cli(database_url, "models", "register", str(bank_model_dir))[0] == 0
    other = app_a.post("/v1/models/test-bank-k5/activate")
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "model_refused"
    assert other.json()["error"]["details"][0]["loc"] == "features"
    assert app_a.get("/v1/models").json()["active"] == "test-rfm-k4"

    # an artifact changed in the registry after it was registered is refused at load
    assert segments_cli(database_url, "models", "register", str(rfm_model_b))[0] == 0
    engine = create_engine(database_url)
    with engine.begin() as conn:
        blob = conn.execute(
            text("SELECT artifact FROM model_versions WHERE version = 'test-rfm-k5'")
        ).scalar_one()
        tampered = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
        conn.execute(
            text("UPDATE model_versions SET artifact = :blob WHERE version = 'test-rfm-k5'"),
            {"blob": tampered},
        )
    engine.dispose()
    refused = app_a.post("/v1/models/test-rfm-k5/activate")
    assert refused.status_code == 409, refused.text
    assert "sha256" in refused.json()["error"]["message"]
    assert app_a.get("/v1/models").json()["active"] == "test-rfm-k4"
    assert assign(app_a, "c1", CHAMPION)["model_version"] == "test-rfm-k4"

    # the same version name with another artifact cannot be registered
    impostor = tmp_path / "test-rfm-k4"
    shutil.copytree(rfm_model_b, impostor)
    manifest = json.loads((impostor / "manifest.json").read_text())
    (impostor / "manifest.json").write_text(json.dumps(manifest | {"version": "test-rfm-k4"}))
    code, output = segments_cli(database_url, "models", "register", str(impostor))
    assert code == 2
    assert "registered already with another artifact" in " ".join(output.split())


def test_a_second_process_follows_the_registry_within_seconds(
    app_a: TestClient, database_url: str, rfm_model_dir: Path, rfm_model_b: Path
) -> None:
    # another replica, started later with the same configuration
    other_settings = make_settings(database_url, rfm_model_dir, model_poll_seconds=0.2)
    with TestClient(create_app(other_settings)) as other:
        assert segments_cli(database_url, "models", "register", str(rfm_model_b))[0] == 0
        code, output = segments_cli(database_url, "models", "activate", "test-rfm-k5")
        assert code == 0, output
        started = time.monotonic()
        for client in (app_a, other):
            while client.get("/readyz").json()["model_version"] != "test-rfm-k5":
                assert time.monotonic() - started < 5, "did not converge within 5 s"
                time.sleep(0.05)
        assert assign(other, "c9", LAPSED)["model_version"] == "test-rfm-k5"
        assert other.get("/readyz").json()["registry_active"] == "test-rfm-k5"


def test_a_replica_started_on_an_old_model_serves_the_registrys_active(
    app_a: TestClient, database_url: str, rfm_model_dir: Path, rfm_model_b: Path
) -> None:
    assert app_a.post("/v1/models/rollback").status_code == 409  # nothing retired yet
    assert segments_cli(database_url, "models", "register", str(rfm_model_b))[0] == 0
    assert app_a.post("/v1/models/test-rfm-k5/activate").status_code == 200
    # started with test-rfm-k4's folder: the registry's choice wins, loaded from the database
    with TestClient(create_app(make_settings(database_url, rfm_model_dir))) as late:
        assert late.get("/readyz").json()["model_version"] == "test-rfm-k5"
    # unless the operator explicitly asks for the folder's model (segments serve --model)
    explicit = make_settings(database_url, rfm_model_dir, model_activate_on_start=True)
    with TestClient(create_app(explicit)) as chosen:
        assert chosen.get("/readyz").json()["model_version"] == "test-rfm-k4"
        assert chosen.get("/v1/models").json()["active"] == "test-rfm-k4"


def test_serve_activates_its_model_once_at_launch_and_says_so_when_it_cannot(
    app_a: TestClient,
    database_url: str,
    rfm_model_dir: Path,
    rfm_model_b: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert segments_cli(database_url, "models", "register", str(rfm_model_b))[0] == 0
    assert app_a.post("/v1/models/test-rfm-k5/activate").status_code == 200
    k4 = load_artifact(rfm_model_dir)
    _activate_at_launch(make_settings(database_url, rfm_model_dir), k4)  # serve --model k4
    assert app_a.get("/v1/models").json()["active"] == "test-rfm-k4"
    # a store that is down: a warning that names the way out, and the server still starts
    down = make_settings("postgresql+psycopg://postgres@127.0.0.1:1/none", rfm_model_dir)
    _activate_at_launch(down, k4)
    warning = " ".join(capsys.readouterr().err.split())
    assert "could not activate test-rfm-k4" in warning
    assert "segments models activate test-rfm-k4" in warning
    # the same version name with another artifact: refused with a message, nothing changed
    impostor = dataclasses.replace(k4, sha256="0" * 64)
    with pytest.raises(typer.Exit) as stopped:
        _activate_at_launch(make_settings(database_url, rfm_model_dir), impostor)
    assert stopped.value.exit_code == 2
    assert "registered already with another artifact" in " ".join(capsys.readouterr().err.split())
    assert app_a.get("/v1/models").json()["active"] == "test-rfm-k4"


def test_a_server_that_cannot_start_does_not_switch_the_fleets_model(
    app_a: TestClient, database_url: str, rfm_model_b: Path
) -> None:
    """`serve --model` checks what the workers would refuse before it activates anything."""
    result = CliRunner().invoke(
        cli,
        ["serve", "--model", str(rfm_model_b)],
        env={"DATABASE_URL": database_url, "SEGMENTS_API_KEYS": "not a key entry"},
    )
    assert result.exit_code == 2, result.output
    assert "error" in result.output
    # nor one whose port is taken
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(
            cli,
            ["serve", "--model", str(rfm_model_b), "--port", port],
            env={
                "DATABASE_URL": database_url,
                "SEGMENTS_ALLOW_ANONYMOUS": "true",
                "SEGMENTS_ERASURE_KEY": "tests-erasure-key",
            },
        )
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in " ".join(result.output.split())
    assert app_a.get("/v1/models").json()["active"] == "test-rfm-k4"
    assert "test-rfm-k5" not in {m["version"] for m in app_a.get("/v1/models").json()["models"]}


def test_a_worker_that_cannot_load_the_new_version_keeps_serving_and_says_why(
    app_a: TestClient, database_url: str, rfm_model_b: Path
) -> None:
    assert segments_cli(database_url, "models", "register", str(rfm_model_b))[0] == 0
    # the registry points at a version whose stored artifact this process cannot verify
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE model_versions SET artifact_sha256 = :sha, status = 'retired' "
                "WHERE version = 'test-rfm-k4'"
            ),
            {"sha": app_a.get("/v1/models/active").json()["artifact_sha256"]},
        )
        conn.execute(
            text("UPDATE model_versions SET status = 'active' WHERE version = 'test-rfm-k5'")
        )
        conn.execute(
            text("UPDATE model_versions SET artifact = :junk WHERE version = 'test-rfm-k5'"),
            {"junk": b"not a skops file"},
        )
    engine.dispose()
    deadline = time.monotonic() + 5
    while "model_problem" not in (ready := app_a.get("/readyz").json()):
        assert time.monotonic() < deadline, ready
        time.sleep(0.05)
    assert ready["status"] == "ready"
    assert ready["model_version"] == "test-rfm-k4"
    assert ready["registry_active"] == "test-rfm-k5"
    assert "test-rfm-k5" in ready["model_problem"]
    assert assign(app_a, "c1", CHAMPION)["model_version"] == "test-rfm-k4"
    exposition = app_a.get("/metrics").text
    assert (
        metric_value(
            exposition, "segment_model_loads_total", version="test-rfm-k5", outcome="failed"
        )
        == 1
    )


def test_compare_reports_moves_agreement_and_gates_activation(
    app_a: TestClient, database_url: str, rfm_model_b: Path, rfm_model_twin: Path, tmp_path: Path
) -> None:
    customers = [
        {"customer_id": f"k{i}", "features": features}
        for i, features in enumerate([CHAMPION, LAPSED] * 60)
    ]
    customers += [
        {
            "customer_id": f"m{i}",
            "features": {
                "recency_days": 20 + i,
                "frequency": 1 + i % 9,
                "monetary": 40.0 * (1 + i),
            },
        }
        for i in range(80)
    ]
    assert app_a.post("/v1/assignments/batch", json={"customers": customers}).status_code == 200
    for folder in (rfm_model_b, rfm_model_twin):
        assert segments_cli(database_url, "models", "register", str(folder))[0] == 0

    report_file = tmp_path / "compare.json"
    code, output = segments_cli(
        database_url, "models", "compare", "active", "test-rfm-k5", "--json", str(report_file)
    )
    assert code == 0, output
    report = json.loads(report_file.read_text())
    assert report["customers"] == 200
    assert sum(sum(row.values()) for row in report["transitions"].values()) == 200
    moved = sum(
        n for old, row in report["transitions"].items() for new, n in row.items() if old != new
    )
    assert report["moved_share"] == pytest.approx(moved / 200)
    assert report["agreement"] == pytest.approx(1 - moved / 200)
    assert -1 <= report["adjusted_rand_index"] <= 1
    assert {s["key"] for s in report["segments"]} >= set(report["transitions"])

    twin = segments_cli(database_url, "models", "compare", "test-rfm-k4", "test-rfm-k4-twin")
    assert twin[0] == 0, twin[1]
    summary = " ".join(twin[1].split())
    assert "agreement 100.0%" in summary
    assert "adjusted Rand index 1.000" in summary

    assert report["agreement"] < 1  # k=4 and k=5 models cannot agree on everyone
    gated = app_a.post("/v1/models/test-rfm-k5/activate", params={"min_agreement": 1})
    assert gated.status_code == 409, gated.text
    assert gated.json()["error"]["details"][0]["loc"] == "min_agreement"
    code, output = segments_cli(
        database_url, "models", "activate", "test-rfm-k5", "--min-agreement", "1"
    )
    assert code == 1, output
    assert app_a.get("/v1/models").json()["active"] == "test-rfm-k4"
    via_api = app_a.get("/v1/models/test-rfm-k5/comparison").json()
    assert via_api["agreement"] == report["agreement"]
    passed = app_a.post("/v1/models/test-rfm-k4-twin/activate", params={"min_agreement": 1})
    assert passed.status_code == 200, passed.text


def test_shadow_scores_live_traffic_and_counts_agreement(
    app_a: TestClient, database_url: str, rfm_model_b: Path, rfm_model_twin: Path
) -> None:
    for folder in (rfm_model_b, rfm_model_twin):
        assert segments_cli(database_url, "models", "register", str(folder))[0] == 0
    assert app_a.post("/v1/models/test-rfm-k4/shadow").status_code == 409  # the active one
    response = app_a.post("/v1/models/test-rfm-k4-twin/shadow")
    assert response.status_code == 200, response.text
    for i in range(30):
        assign(app_a, f"s{i}", CHAMPION if i % 2 else LAPSED)
    batch = [{"customer_id": f"t{i}", "features": LAPSED} for i in range(50)]
    assert (
        app_a.post("/v1/assignments/batch?persist=false", json={"customers": batch}).status_code
        == 200
    )

    def shadowed(exposition: str, shadow: str) -> float:
        return metric_value(exposition, "segment_shadow_assignments_total", shadow_version=shadow)

    deadline = time.monotonic() + 5
    while shadowed(exposition := app_a.get("/metrics").text, "test-rfm-k4-twin") < 80:
        assert time.monotonic() < deadline, "shadow scoring did not catch up"
        time.sleep(0.05)
    assert shadowed(exposition, "test-rfm-k4-twin") == 80
    # the twin is the same model: it agrees on every customer
    agreed = metric_value(
        exposition, "segment_shadow_agreements_total", shadow_version="test-rfm-k4-twin"
    )
    assert agreed == 80
    assert metric_value(exposition, "segment_shadow_model_info", version="test-rfm-k4-twin") == 1

    # a genuinely different candidate: counted per pair of segment keys
    assert app_a.post("/v1/models/test-rfm-k5/shadow").status_code == 200
    assert app_a.get("/v1/models").json()["shadow"] == "test-rfm-k5"
    for i in range(40):
        assign(app_a, f"u{i}", CHAMPION if i % 2 else LAPSED)
    deadline = time.monotonic() + 5
    while shadowed(exposition := app_a.get("/metrics").text, "test-rfm-k5") < 40:
        assert time.monotonic() < deadline, "shadow scoring did not catch up"
        time.sleep(0.05)
    pairs = [
        line
        for line in exposition.splitlines()
        if line.startswith("segment_shadow_assignments_total{")
        and 'shadow_version="test-rfm-k5"' in line
    ]
    assert 2 <= len(pairs) <= 4, pairs  # champions and lapsed land in one segment each
    assert app_a.delete("/v1/models/shadow").json() == {"shadow": None}
    assert app_a.get("/v1/models").json()["shadow"] is None


def test_a_poll_that_read_the_registry_before_an_activation_cannot_undo_it(
    database_url: str, rfm_model_dir: Path, rfm_model_b: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher reads the registry in a thread; an activation request can commit and swap
    between that read and the poll acting on it. The stale answer must not put the old model back."""
    clear_tables(database_url)
    settings = make_settings(database_url, rfm_model_dir, model_poll_seconds=60)
    with TestClient(create_app(settings)) as client:
        assert segments_cli(database_url, "models", "register", str(rfm_model_b))[0] == 0
        watcher = client.app_state["runtime"].watcher
        read_registry = watcher.registry.served

        def read_then_an_activation_lands() -> object:
            stale = read_registry()  # says test-rfm-k4
            response = client.post("/v1/models/test-rfm-k5/activate")
            assert response.status_code == 200, response.text
            return stale

        portal = client.portal  # the app's event loop, where the watcher polls
        assert portal is not None
        monkeypatch.setattr(watcher.registry, "served", read_then_an_activation_lands)
        portal.call(watcher.check)
        monkeypatch.undo()
        assert assign(client, "c1", CHAMPION)["model_version"] == "test-rfm-k5"
        portal.call(watcher.check)  # the next poll agrees
        assert assign(client, "c2", CHAMPION)["model_version"] == "test-rfm-k5"
