"""Hashed identifiers and consent over the real app and database: what is stored, what each
purpose's audience shows (paged, streamed, in the feed), and that raw values go nowhere."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli as app_cli
from app.main import create_app
from tests.conftest import clear_tables, make_settings

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}
LAPSED = {"recency_days": 300, "frequency": 1, "monetary": 30.0}
EMAIL = "  Jane.Doe+shop@Example.COM "
PHONE = "+44 20 7946 0958"
# what Google and Meta hash, written out here rather than computed by the code under test
EMAIL_SHA = hashlib.sha256(b"jane.doe+shop@example.com").hexdigest()
GOOGLE_PHONE_SHA = hashlib.sha256(b"+442079460958").hexdigest()
META_PHONE_SHA = hashlib.sha256(b"442079460958").hexdigest()
GOOGLE_ADS = {"identifiers": "google", "purpose": "advertising"}
META_ADS = {"identifiers": "meta", "purpose": "advertising"}


def batch(client: TestClient, *customers: Mapping[str, object]) -> None:
    response = client.post("/v1/assignments/batch", json={"customers": list(customers)})
    assert response.status_code == 200, response.text


def members(client: TestClient, purpose: str, segment: str = "champions") -> list[str]:
    response = client.get(f"/v1/segments/{segment}/members", params={"purpose": purpose})
    assert response.status_code == 200, response.text
    return list(response.json()["members"])


def stored_text(database_url: str) -> str:
    """Every stored row of the customer tables, as text: what a leaked dump would show."""
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = [
            str(tuple(row))
            for table in ("assignments", "memberships", "membership_events")
            for row in conn.execute(text(f"SELECT * FROM {table}"))
        ]
    engine.dispose()
    return "\n".join(rows)


def test_identifiers_are_stored_only_as_platform_hashes(
    client: TestClient, database_url: str
) -> None:
    batch(
        client,
        {
            "customer_id": "jane",
            "features": CHAMPION,
            "email": EMAIL,
            "phone": PHONE,
            "consent": {"advertising": True},
        },
        {"customer_id": "anon", "features": CHAMPION, "consent": {"advertising": True}},
    )
    google = client.get("/v1/segments/champions/members", params=GOOGLE_ADS).json()
    assert google["members"] == ["anon", "jane"]
    jane = google["records"][1]
    assert jane["email_sha256"] == EMAIL_SHA
    assert jane["phone_sha256"] == GOOGLE_PHONE_SHA
    assert jane["entered_at"].endswith("Z")
    assert google["records"][0]["email_sha256"] is None
    meta = client.get("/v1/segments/champions/members", params=META_ADS).json()
    assert meta["records"][1]["phone_sha256"] == META_PHONE_SHA
    assert "records" not in client.get("/v1/segments/champions/members").json()

    # a later assignment without identifiers keeps them
    batch(client, {"customer_id": "jane", "features": CHAMPION})
    again = client.get("/v1/segments/champions/members", params=GOOGLE_ADS)
    assert again.json()["records"][1]["email_sha256"] == EMAIL_SHA

    dump = stored_text(database_url).lower()
    for raw in ("jane.doe", "example.com", "2079460958", "7946"):
        assert raw not in dump

    # platform-format hashes exist to be uploaded to an ad platform: never without the
    # advertising opt-in, whether paged, streamed or exported by the CLI
    for params in (
        {"identifiers": "google"},
        {"identifiers": "meta", "purpose": "personalization"},
        {"identifiers": "google", "format": "csv"},
    ):
        refused = client.get("/v1/segments/champions/members", params=params)
        assert refused.status_code == 422, params
        assert refused.json()["error"]["details"][0]["loc"] == "identifiers"
    cli = CliRunner().invoke(
        app_cli,
        ["export", "--segment", "champions", "--identifiers", "google", "--out", "never.csv"],
        env={"DATABASE_URL": database_url},
    )
    assert cli.exit_code == 2
    assert "purpose=advertising" in cli.output
    assert not Path("never.csv").exists()


def test_bad_identifiers_are_named_by_row_without_echoing_them(
    client: TestClient, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_email = "not-an-address-of-jane"
    secret_phone = "+44 12"
    response = client.post(
        "/v1/assignments/batch",
        json={
            "customers": [
                {"customer_id": "ok", "features": CHAMPION, "email": "fine@example.com"},
                {"customer_id": "b1", "features": CHAMPION, "email": secret_email},
                {"customer_id": "b2", "features": CHAMPION, "phone": secret_phone},
                {"customer_id": "b3", "features": CHAMPION, "consent": {"advertising": "yes"}},
                {"customer_id": "b4", "features": CHAMPION, "consent": {"marketing": True}},
            ]
        },
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert "nothing was stored" in error["message"]
    locs = [d["loc"] for d in error["details"]]
    assert locs == [
        "customers[1].email",
        "customers[2].phone",
        "customers[3].consent.advertising",
        "customers[4].consent",  # an unknown flag's name is not repeated
    ]
    for leaked in (secret_email, secret_phone, "7946"):
        assert leaked not in response.text
        assert leaked not in caplog.text
    assert client.get("/v1/customers/ok/segment").status_code == 404  # the batch stored nothing

    single = client.post(
        "/v1/assignments", json={"customer_id": "s", "features": CHAMPION, "phone": "020 7946"}
    )
    assert single.status_code == 422
    assert single.json()["error"]["details"][0]["loc"] == "phone"
    assert "country code" in single.json()["error"]["details"][0]["problem"]


def test_advertising_needs_an_opt_in_and_personalization_honours_an_objection(
    client: TestClient,
) -> None:
    batch(
        client,
        {"customer_id": "yes", "features": CHAMPION, "consent": {"advertising": True}},
        {"customer_id": "no", "features": CHAMPION, "consent": {"advertising": False}},
        {"customer_id": "unsaid", "features": CHAMPION},
        {
            "customer_id": "objects",
            "features": CHAMPION,
            "consent": {"personalization": False, "advertising": True},
        },
    )
    assert members(client, "advertising") == ["objects", "yes"]
    assert members(client, "personalization") == ["no", "unsaid", "yes"]
    # the default is the contract's audience: everyone in the segment who did not object
    default = client.get("/v1/segments/champions/members").json()
    assert default["members"] == ["no", "unsaid", "yes"]
    assert default["purpose"] == "personalization"

    lookup = client.get("/v1/customers/objects/segment")
    assert lookup.status_code == 404
    assert lookup.json()["error"]["code"] == "consent_withheld"
    assert client.get("/v1/customers/unsaid/segment").status_code == 200
    # the advertising lookup: only customers who opted in; the others answer exactly as an
    # unknown id does, so an ad platform learns nothing about who refused it
    advertising = {"purpose": "advertising"}
    assert client.get("/v1/customers/yes/segment", params=advertising).status_code == 200
    assert client.get("/v1/customers/objects/segment", params=advertising).status_code == 200
    unknown = client.get("/v1/customers/nobody/segment", params=advertising)
    for customer in ("unsaid", "no"):
        refused = client.get(f"/v1/customers/{customer}/segment", params=advertising)
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "customer_not_found"
        assert refused.json()["error"]["message"] == unknown.json()["error"]["message"]

    # flags not sent keep their value; a flag sent changes it
    batch(client, {"customer_id": "yes", "features": CHAMPION})
    assert "yes" in members(client, "advertising")
    batch(
        client,
        {"customer_id": "objects", "features": CHAMPION, "consent": {"personalization": True}},
    )
    assert client.get("/v1/customers/objects/segment").status_code == 200

    bad = client.get("/v1/segments/champions/members", params={"purpose": "marketing"})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["loc"] == "purpose"


def test_consent_changes_are_feed_events_for_their_purpose(client: TestClient) -> None:
    start = client.get("/v1/changes").json()["next_cursor"]

    def feed(purpose: str) -> list[tuple[str, str, str, str]]:
        page = client.get("/v1/changes", params={"since": start, "purpose": purpose}).json()
        return [
            (c["customer_id"], c["event"], c["segment"]["key"], c["cause"]) for c in page["changes"]
        ]

    def assign(features: dict[str, float], **consent: bool) -> str:
        body: dict[str, object] = {"customer_id": "c", "features": features}
        if consent:
            body["consent"] = consent
        response = client.post("/v1/assignments", json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["segment"]["key"])

    top = assign(CHAMPION)  # no consent sent: personalization only
    assign(CHAMPION, advertising=True)  # opts in: enters the advertising audience
    low = assign(LAPSED)  # moves: both feeds
    assign(LAPSED, advertising=False)  # opts out: leaves the advertising audience only
    assign(LAPSED, personalization=False)  # objects: leaves the personalization audience
    assign(CHAMPION)  # moves while in no audience: no event anywhere

    assert feed("advertising") == [
        ("c", "entered", top, "consent"),
        ("c", "exited", top, "assignment"),
        ("c", "entered", low, "assignment"),
        ("c", "exited", low, "consent"),
    ]
    assert feed("personalization") == [
        ("c", "entered", top, "assignment"),
        ("c", "exited", top, "assignment"),
        ("c", "entered", low, "assignment"),
        ("c", "exited", low, "consent"),
    ]


def test_streamed_exports_match_the_pages_in_both_formats(client: TestClient) -> None:
    awkward = 'comma,"quote" é'
    ids = [awkward, *(f"m{i:04d}" for i in range(2500))]
    for start in range(0, len(ids), 1000):
        batch(
            client,
            *(
                {
                    "customer_id": c,
                    "features": CHAMPION,
                    "email": f"{i}@example.com",
                    "consent": {"advertising": True},
                }
                for i, c in enumerate(ids[start : start + 1000], start)
            ),
        )
    batch(client, {"customer_id": "lapsed", "features": LAPSED, "consent": {"advertising": True}})
    batch(client, {"customer_id": "m9999", "features": CHAMPION})  # no consent: not exported
    every_event: dict[str, str | int] = {"limit": 10_000, "purpose": "personalization"}
    feed_cursor = client.get("/v1/changes", params=every_event).json()

    paged: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 1000, "purpose": "advertising"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/segments/champions/members", params=params).json()
        paged += page["members"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(paged) == sorted(ids)
    # pages with identifiers (read with each member's record) page the same way
    recorded: list[str] = []
    cursor = None
    while True:
        params = {"limit": 1000, **GOOGLE_ADS}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/segments/champions/members", params=params).json()
        assert [record["customer_id"] for record in page["records"]] == page["members"]
        recorded += page["members"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert recorded == paged

    ndjson = client.get(
        "/v1/segments/champions/members",
        params=GOOGLE_ADS,
        headers={"accept": "application/x-ndjson"},
    )
    assert ndjson.status_code == 200
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in ndjson.content.splitlines()]
    assert [line["customer_id"] for line in lines] == paged
    assert {line["segment"] for line in lines} == {"champions"}
    assert lines[0]["email_sha256"] == hashlib.sha256(b"0@example.com").hexdigest()
    assert set(lines[0]) == {"customer_id", "segment", "entered_at", "email_sha256", "phone_sha256"}
    # the snapshot's feed position: everything so far is behind it
    position = ndjson.headers["segments-feed-cursor"]
    assert feed_cursor["changes"]
    ahead = client.get("/v1/changes", params={**every_event, "since": position}).json()
    assert ahead["changes"] == []

    exported = client.get(
        "/v1/segments/champions/members", params={"format": "csv", "purpose": "advertising"}
    )
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert rows[0] == ["customer_id", "segment", "entered_at"]
    assert [r[0] for r in rows[1:]] == paged
    assert awkward in [r[0] for r in rows[1:]]

    missing = client.get("/v1/segments/nope/members", params={"format": "ndjson"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "segment_not_found"

    # following the feed from the export's position misses nothing and repeats nothing
    batch(client, {"customer_id": "late", "features": CHAMPION, "consent": {"advertising": True}})
    after = client.get("/v1/changes", params={"since": position, "purpose": "advertising"}).json()[
        "changes"
    ]
    assert [(c["customer_id"], c["event"]) for c in after] == [("late", "entered")]


def test_csv_exports_neutralise_ids_a_spreadsheet_would_run_as_formulas(
    client: TestClient,
) -> None:
    """OWASP's CSV injection advice: cells starting =, +, -, @, tab or CR get an apostrophe."""
    hostile = ['=HYPERLINK("https:example.com")', "+cmd|' -C calc'!A0", "-2+3", "@SUM(A1)"]
    plain = ["plain-id", "a=b"]
    batch(client, *({"customer_id": c, "features": CHAMPION} for c in hostile + plain))
    exported = client.get("/v1/segments/champions/members", params={"format": "csv"})
    cells = [row[0] for row in csv.reader(io.StringIO(exported.text))][1:]
    assert sorted(cells) == sorted(["'" + c for c in hostile] + plain)
    # the other formats carry ids as they are: JSON is not run by spreadsheets
    paged = client.get("/v1/segments/champions/members").json()["members"]
    assert sorted(paged) == sorted(hostile + plain)


def test_a_default_region_completes_national_phone_numbers(
    database_url: str, rfm_model_dir: Path
) -> None:
    clear_tables(database_url)
    settings = make_settings(database_url, rfm_model_dir, phone_default_region="gb")
    with TestClient(create_app(settings)) as client:
        batch(
            client,
            {
                "customer_id": "uk",
                "features": CHAMPION,
                "phone": "020 7946 0958",
                "consent": {"advertising": True},
            },
        )
        page = client.get(
            "/v1/segments/champions/members",
            params=GOOGLE_ADS,
        )
        assert page.json()["records"][0]["phone_sha256"] == GOOGLE_PHONE_SHA
    with pytest.raises(ValueError, match="region"):
        make_settings(database_url, rfm_model_dir, phone_default_region="XX")


def test_segments_export_takes_its_format_from_the_file_name(
    client: TestClient, database_url: str, tmp_path: Path
) -> None:
    batch(
        client,
        {"customer_id": "in", "features": CHAMPION, "consent": {"advertising": True}},
        {"customer_id": "out", "features": CHAMPION},
    )
    for name, purpose, first in (
        ("ads.ndjson", "advertising", '{"customer_id":"in"'),
        ("all.csv", "personalization", "customer_id,segment,entered_at"),
    ):
        target = tmp_path / name
        result = CliRunner().invoke(
            app_cli,
            ["export", "--segment", "champions", "--purpose", purpose, "--out", str(target)],
            env={"DATABASE_URL": database_url},
        )
        assert result.exit_code == 0, result.output
        lines = target.read_text().splitlines()
        assert lines[0].startswith(first), (name, lines[0])
    assert len((tmp_path / "ads.ndjson").read_text().splitlines()) == 1  # consent honoured
    feed = client.get("/v1/changes", params={"purpose": "advertising"}).json()
    assert feed["purpose"] == "advertising"
