"""Training: RFM arithmetic, k search, names from profiles, determinism, and the CLI."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.datafiles import TableError
from app.scoring.artifact import load_artifact
from app.scoring.model import SegmentModel
from app.training.rfm import TransactionColumns, compute_rfm
from tests.conftest import BANK_CLIENTS, synthetic_transactions


def test_rfm_drops_cancellations_and_blank_customers() -> None:
    raw = pd.DataFrame(
        {
            "inv": ["1", "1", "2", "C3", "4", "5"],
            "cust": ["17850.0", "17850.0", "17850.0", "17850.0", "13047", None],
            "when": [
                "2011-01-01 10:00",
                "2011-01-01 10:00",
                "2011-01-05 09:00",
                "2011-01-06",
                "2011-01-02",
                "2011-01-03",
            ],
            "qty": ["2", "1", "1", "-1", "3", "1"],
            "price": ["5.0", "10.0", "2.5", "5.0", "1.0", "9.0"],
        }
    )
    result = compute_rfm(
        raw,
        TransactionColumns("cust", "when", quantity="qty", price="price", invoice="inv"),
        date(2011, 1, 10),
    )
    features = result.features
    assert list(features.index) == [
        "13047",
        "17850",
    ]  # '17850.0' normalised, blank customer dropped
    assert features.loc["17850"].to_dict() == {
        "recency_days": 5.0,
        "frequency": 2,
        "monetary": 22.5,
    }
    assert features.loc["13047"].to_dict() == {"recency_days": 8.0, "frequency": 1, "monetary": 3.0}
    assert result.rows_dropped["cancellation_or_return"] == 1
    assert result.rows_dropped["no_customer"] == 1


def test_amount_or_quantity_and_price_are_required() -> None:
    with pytest.raises(TableError):
        TransactionColumns("c", "t")
    with pytest.raises(TableError):
        TransactionColumns("c", "t", amount="a", quantity="q", price="p")


def test_training_is_deterministic(tmp_path: Path) -> None:
    data = synthetic_transactions(tmp_path / "tx.csv", customers=200, seed=1)
    runner = CliRunner()
    versions = []
    for name in ("one", "two"):
        args = [
            "train",
            "transactions",
            str(data),
            "--customer",
            "customer",
            "--time",
            "time",
            "--amount",
            "amount",
            "--invoice",
            "invoice",
            "--k-range",
            "4-5",
            "--out",
            str(tmp_path / "models"),
            "--version",
            name,
        ]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().endswith(name)
        versions.append(tmp_path / "models" / name)
    first, second = (json.loads((v / "manifest.json").read_text()) for v in versions)
    for manifest in (first, second):
        # skops records Python object ids in the file, so its bytes (and checksum) differ per run
        del manifest["trained_at"], manifest["version"], manifest["artifact_sha256"]
    assert (
        first == second
    )  # same segments, names, profiles, k scores, drift baseline, parity sample
    one, two = (load_artifact(v).pipeline for v in versions)
    assert (one[-1].cluster_centers_ == two[-1].cluster_centers_).all()
    assert [s["k"] for s in first["quality"]["k_search"]] == [4, 5]


def test_rfm_segments_get_marketing_names(rfm_model_dir: Path) -> None:
    manifest = load_artifact(rfm_model_dir).manifest
    by_key = {s.key: s for s in manifest.segments}
    assert "champions" in by_key
    champions = by_key["champions"].numeric_profile
    others = [s.numeric_profile for s in manifest.segments if s.key != "champions"]
    assert all(champions["monetary"].median > o["monetary"].median for o in others)
    assert all(champions["recency_days"].median <= o["recency_days"].median for o in others)


def test_customer_table_model_on_real_bank_clients(bank_model_dir: Path) -> None:
    model = SegmentModel.load(bank_model_dir)
    manifest = model.manifest
    assert {f.name: f.type for f in manifest.features} == {
        "age": "integer",
        "balance": "integer",
        "job": "category",
        "marital": "category",
        "education": "category",
        "housing": "category",
    }
    balance = next(f for f in manifest.features if f.name == "balance")
    assert balance.minimum is not None
    assert balance.minimum < 0
    assert len({s.key for s in manifest.segments}) == 5
    assert all(s.name and s.description for s in manifest.segments)
    assert all("customers" not in s.key for s in manifest.segments)  # descriptive, not numbered


def test_train_customers_cli_reports_bad_columns(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "customers",
            str(BANK_CLIENTS),
            "--id",
            "client_id",
            "--numeric",
            "age,nope",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert "nope" in result.output
