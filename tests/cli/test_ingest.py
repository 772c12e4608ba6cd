"""`segments ingest transactions`: a purchase history loaded in bulk, on the real store, gives
every customer the features training computes from the same file, and a segment."""

from __future__ import annotations

import gzip
from datetime import UTC, date
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient
from typer.testing import CliRunner

from app.cli import cli
from app.main import create_app
from app.training.rfm import RFM_FEATURES, rfm_features
from tests.conftest import (
    DEFAULT_MODELS,
    ONLINE_RETAIL,
    TEST_ERASURE_KEY,
    clear_tables,
    count_rows,
    make_settings,
)

COLUMNS = [
    "--customer",
    "CustomerID",
    "--time",
    "InvoiceDate",
    "--quantity",
    "Quantity",
    "--price",
    "UnitPrice",
    "--invoice",
    "InvoiceNo",
]
TRAINING_DATE = date(2011, 12, 10)


def ingest(database_url: str, path: Path, *options: str) -> tuple[int, str]:
    env = {
        "DATABASE_URL": database_url,
        "SEGMENTS_ERASURE_KEY": TEST_ERASURE_KEY,
        "SEGMENTS_MODEL_DIR": str(DEFAULT_MODELS / "online-retail-rfm-k5"),
    }
    result = CliRunner().invoke(cli, ["ingest", "transactions", str(path), *options], env=env)
    return result.exit_code, " ".join(result.output.split())


def live_features(database_url: str) -> pd.DataFrame:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT customer_id, last_purchase_at, orders, spend FROM customer_activity")
        ).all()
    engine.dispose()
    return pd.DataFrame(
        [
            rfm_features(last.astimezone(UTC).date(), n, spend, TRAINING_DATE)
            for _, last, n, spend in rows
        ],
        index=pd.Index([r[0] for r in rows], name="customer_id"),
        columns=list(RFM_FEATURES),
    ).sort_index()


@pytest.mark.slow
def test_all_of_online_retail_ingested_gives_the_training_features_and_everyone_a_segment(
    database_url: str, online_retail_rfm: pd.DataFrame
) -> None:
    clear_tables(database_url)
    code, output = ingest(database_url, ONLINE_RETAIL, *COLUMNS, "--currency", "GBP")
    assert code == 0, output
    assert "loaded 541,909 rows" in output
    assert "406,829 events stored" in output
    assert "135,080 skipped (no_customer)" in output
    assert "scored 4,339 customers" in output
    live = live_features(database_url).astype(online_retail_rfm.dtypes.to_dict())
    pd.testing.assert_frame_equal(live, online_retail_rfm, check_exact=True)
    assert count_rows(database_url, "memberships") == 4339
    # the same file again stores nothing more and re-scores nobody
    code, output = ingest(database_url, ONLINE_RETAIL, *COLUMNS)
    assert code == 0, output
    assert "0 events stored, 406,829 ingested before" in output
    assert count_rows(database_url, "purchase_events") == 406_829
    assert count_rows(database_url, "assignments") == 4339


def first_rows(rows: int) -> pd.DataFrame:
    return pd.read_csv(ONLINE_RETAIL, dtype=str, nrows=rows)


@pytest.mark.parametrize("layout", ["semicolon.csv.gz", "tab.tsv", "pipe.csv", "parquet.parquet"])
def test_separators_compression_and_parquet_are_recognised(
    database_url: str, tmp_path: Path, layout: str
) -> None:
    clear_tables(database_url)
    raw = first_rows(3000)
    path = tmp_path / layout
    if layout.startswith("parquet"):
        raw.to_parquet(path)
    else:
        separator = {"semicolon": ";", "tab": "\t", "pipe": "|"}[layout.split(".")[0]]
        data = raw.to_csv(sep=separator, index=False).encode()
        path.write_bytes(gzip.compress(data) if layout.endswith(".gz") else data)
    code, output = ingest(database_url, path, *COLUMNS)
    assert code == 0, output
    expected = len(raw.dropna(subset=["CustomerID"]))
    assert f"{expected:,} events stored" in output
    assert count_rows(database_url, "purchase_events") == expected


def test_a_refused_customer_id_stores_nothing_and_names_the_row(
    database_url: str, tmp_path: Path
) -> None:
    clear_tables(database_url)
    raw = first_rows(500)
    raw.loc[321, "CustomerID"] = "a/b"
    path = tmp_path / "bad.csv"
    raw.to_csv(path, index=False)
    code, output = ingest(database_url, path, *COLUMNS)
    assert code == 2
    assert "row 322: customer id 'a/b'" in output
    assert "nothing was stored" in output
    assert count_rows(database_url, "purchase_events") == 0
    assert count_rows(database_url, "customer_activity") == 0


def test_an_erased_customers_rows_are_not_stored(database_url: str, tmp_path: Path) -> None:
    clear_tables(database_url)
    raw = first_rows(2000)
    erased = str(raw["CustomerID"].dropna().iloc[0]).removesuffix(".0")
    settings = make_settings(database_url, DEFAULT_MODELS)
    with TestClient(create_app(settings)) as client:
        known = {
            "event_id": "before",
            "customer_id": erased,
            "occurred_at": "2010-11-30T10:00:00Z",
            "amount": 5.0,
            "type": "order",
        }
        assert client.post("/v1/events", json={"events": [known]}).status_code == 200
        assert client.delete(f"/v1/customers/{erased}").status_code == 204
    path = tmp_path / "history.csv"
    raw.to_csv(path, index=False)
    code, output = ingest(database_url, path, *COLUMNS)
    assert code == 0, output
    theirs = int((raw["CustomerID"].str.removesuffix(".0") == erased).sum())
    assert theirs > 0
    assert f"{theirs:,} of erased customers not stored" in output
    engine = create_engine(database_url)
    with engine.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM purchase_events WHERE customer_id = :c"), {"c": erased}
        ).scalar_one()
        member = conn.execute(
            text("SELECT count(*) FROM memberships WHERE customer_id = :c"), {"c": erased}
        ).scalar_one()
    engine.dispose()
    assert (left, member) == (0, 0)
