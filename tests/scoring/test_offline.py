"""`segments score`: a file in, the same rows out with segment columns, in chunks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from app.cli import cli
from tests.conftest import BANK_CLIENTS, DEFAULT_MODELS


def test_scores_csv_in_chunks_keeping_every_row(tmp_path: Path) -> None:
    source = tmp_path / "customers.csv"
    frame = pd.DataFrame(
        {
            "customer": [f"c{i}" for i in range(1000)],
            "recency_days": [i % 300 for i in range(1000)],
            "frequency": [1 + i % 40 for i in range(1000)],
            "monetary": [10.0 + 7 * i for i in range(1000)],
        }
    )
    frame.to_csv(source, index=False)
    target = tmp_path / "scored.csv"
    result = CliRunner().invoke(
        cli,
        [
            "score",
            "--model",
            str(DEFAULT_MODELS),
            "--input",
            str(source),
            "--output",
            str(target),
            "--chunk-rows",
            "128",
        ],
    )
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(target)
    assert len(scored) == 1000
    assert list(scored.columns) == [
        *frame.columns,
        "segment_id",
        "segment_key",
        "segment_name",
        "distance",
        "confidence",
    ]
    assert scored["customer"].tolist() == frame["customer"].tolist()
    assert scored["segment_key"].nunique() >= 3


def test_scores_parquet_to_parquet_with_categories(tmp_path: Path, bank_model_dir: Path) -> None:
    source = tmp_path / "bank.parquet"
    pd.read_csv(BANK_CLIENTS).to_parquet(source)
    target = tmp_path / "out.parquet"
    result = CliRunner().invoke(
        cli,
        ["score", "--model", str(bank_model_dir), "--input", str(source), "--output", str(target)],
    )
    assert result.exit_code == 0, result.output
    out = pd.read_parquet(target)
    assert len(out) == 1500
    assert out["segment_key"].notna().all()


def test_bad_rows_are_named_and_no_output_is_left(tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("recency_days,frequency,monetary\n1,2,30\n5,x,10\n-3,1,1\n")
    target = tmp_path / "out.csv"
    result = CliRunner().invoke(
        cli,
        ["score", "--model", str(DEFAULT_MODELS), "--input", str(source), "--output", str(target)],
    )
    assert result.exit_code == 2
    assert "row 2, frequency" in result.output
    assert "row 3, recency_days" in result.output
    assert not target.exists()
    assert not list(tmp_path.glob(".*partial"))
