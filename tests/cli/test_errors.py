"""What a new user gets wrong, said by the real CLI in one line on stderr with what to do, exit
status 2 and no traceback: an output folder that does not exist, a file type it would only
guess, a bad key name, a database that does not exist or does not answer, columns that are not
there (whatever the separator), a --time column that parses nowhere, and models that take
different features."""

from __future__ import annotations

import gzip
import re
import socket
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from app.cli import cli
from tests.conftest import (
    DEFAULT_MODELS,
    TEST_ERASURE_KEY,
    clear_tables,
    count_rows,
    synthetic_transactions,
)

DEFAULT_MODEL = DEFAULT_MODELS / "online-retail-rfm-k5"
COLUMNS = ["--customer", "customer", "--time", "time", "--amount", "amount"]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def refused(result: Result) -> str:
    """The one line a refusal printed, after checking it is one: exit 2, a clean exit (no
    traceback), nothing on stdout, a single `error:` line on stderr."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def customers_file(tmp_path: Path) -> Path:
    """Customers with the default model's features."""
    path = tmp_path / "customers.csv"
    pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(30)],
            "recency_days": [i * 10 for i in range(30)],
            "frequency": [1 + i % 7 for i in range(30)],
            "monetary": [25.0 * (i + 1) for i in range(30)],
        }
    ).to_csv(path, index=False)
    return path


def test_score_into_a_folder_that_does_not_exist(customers_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "no-such-folder" / "scored.csv"
    line = refused(
        run(
            "score",
            "--model",
            str(DEFAULT_MODEL),
            "--input",
            str(customers_file),
            "--output",
            str(target),
        )
    )
    assert f"the folder {target.parent} does not exist" in line
    assert f"mkdir -p {target.parent}" in line
    assert not target.parent.exists()


@pytest.mark.parametrize("name", ["scored.xlsx", "scored", "scored.json"])
def test_score_refuses_an_output_type_it_would_guess(
    customers_file: Path, tmp_path: Path, name: str
) -> None:
    line = refused(
        run(
            "score",
            "--model",
            str(DEFAULT_MODEL),
            "--input",
            str(customers_file),
            "--output",
            str(tmp_path / name),
        )
    )
    assert "unknown file type" in line
    assert ".csv, .csv.gz, .parquet or .pq" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customers.csv"]  # nothing written


def test_score_writes_gzip_for_csv_gz(customers_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "scored.csv.gz"
    args = ["--model", str(DEFAULT_MODEL), "--input", str(customers_file), "--output"]
    result = run("score", *args, str(target), "--chunk-rows", "7")  # several gzip members
    assert result.exit_code == 0, result.output
    with gzip.open(target, "rt") as scored:
        frame = pd.read_csv(scored)
    assert len(frame) == 30
    assert list(frame["customer_id"]) == [f"c{i}" for i in range(30)]


def test_export_into_a_folder_that_does_not_exist_or_of_an_unknown_type(
    database_url: str, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": database_url}
    target = tmp_path / "missing" / "champions.csv"
    line = refused(run("export", "--segment", "champions", "--out", str(target), env=env))
    assert f"the folder {target.parent} does not exist" in line

    line = refused(
        run("export", "--segment", "champions", "--out", str(tmp_path / "a.xlsx"), env=env)
    )
    assert "--out" in line
    assert "unknown file type .xlsx" in line
    assert ".csv, .ndjson or .jsonl" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["has space", "", "sk_looks_like_a_key", "a:b"])
def test_keys_create_with_a_bad_name(name: str) -> None:
    line = refused(run("keys", "create", "--scopes", "read", "--name", name))
    assert f"--name {name!r}" in line
    assert "names are 1 to 64 letters" in line


@pytest.mark.parametrize(
    "command",
    [["models", "list"], ["migrate"], ["rescore"], ["export", "--segment", "x", "--out", "x.csv"]],
    ids=lambda c: c[0],
)
def test_a_database_that_does_not_exist(
    postgres_server: str, tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = make_url(postgres_server).set(drivername="postgresql+psycopg", database="nope_h_cli")
    env = {
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "SEGMENTS_ERASURE_KEY": TEST_ERASURE_KEY,
    }
    line = refused(run(*command, env=env))
    assert 'database "nope_h_cli" does not exist' in line
    assert re.search(r"createdb( -[hpU] \S+)* nope_h_cli", line), line
    assert url.password is None or url.password not in line


def test_a_server_that_does_not_answer() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/segments"}
    line = refused(run("models", "list", env=env))
    assert f"no PostgreSQL answers at 127.0.0.1:{port}" in line
    assert "DATABASE_URL" in line


@pytest.mark.parametrize("separator", ["\t", ";"], ids=["tab", "semicolon"])
def test_tab_and_semicolon_separated_transactions_train(tmp_path: Path, separator: str) -> None:
    comma = synthetic_transactions(tmp_path / "comma.csv", customers=120)
    other = tmp_path / "transactions.txt"
    pd.read_csv(comma, dtype=str).to_csv(other, sep=separator, index=False)
    out = tmp_path / "models"
    result = run(
        "train", "transactions", str(other), *COLUMNS, "--segments", "4", "--out", str(out)
    )
    assert result.exit_code == 0, result.output

    line = refused(
        run(
            "train",
            "transactions",
            str(other),
            "--customer",
            "CustomerID",
            "--time",
            "time",
            "--amount",
            "amount",
            "--out",
            str(out),
        )
    )
    kind = "tab" if separator == "\t" else "semicolon"
    assert "no column CustomerID" in line
    assert "its columns are invoice, customer, time, amount" in line
    assert f"(read as {kind}-separated)" in line


def test_a_time_column_that_parses_nowhere_stops_training(tmp_path: Path) -> None:
    data = synthetic_transactions(tmp_path / "transactions.csv", customers=120)
    args = ["--customer", "customer", "--time", "invoice", "--amount", "amount"]
    line = refused(run("train", "transactions", str(data), *args, "--out", str(tmp_path / "m")))
    rows = len(pd.read_csv(data))
    assert f"--time invoice: {rows:,} of {rows:,} rows had no parseable time" in line
    assert "(e.g. 'INV0-0')" in line
    assert not (tmp_path / "m").exists()


def test_a_time_column_that_parses_nowhere_stops_ingest_before_loading(
    database_url: str, tmp_path: Path
) -> None:
    clear_tables(database_url)
    data = synthetic_transactions(tmp_path / "transactions.csv", customers=40)
    env = {
        "DATABASE_URL": database_url,
        "SEGMENTS_ERASURE_KEY": TEST_ERASURE_KEY,
        "SEGMENTS_MODEL_DIR": str(DEFAULT_MODEL),
    }
    args = ["--customer", "customer", "--time", "invoice", "--amount", "amount"]
    line = refused(run("ingest", "transactions", str(data), *args, env=env))
    assert re.search(r"--time invoice: [\d,]+ of [\d,]+ rows had no parseable time", line)
    line = refused(
        run(
            "ingest",
            "transactions",
            str(data),
            *COLUMNS[:2],
            "--time",
            "when",
            *COLUMNS[4:],
            env=env,
        )
    )
    assert "no column when; its columns are invoice, customer, time, amount" in line
    assert count_rows(database_url, "purchase_events") == 0


def test_compare_models_that_take_different_features(
    database_url: str, rfm_model_dir: Path, bank_model_dir: Path, customers_file: Path
) -> None:
    clear_tables(database_url)
    env = {"DATABASE_URL": database_url}
    models = [str(rfm_model_dir), str(bank_model_dir)]
    stored = refused(run("models", "compare", *models, env=env))
    on_file = refused(run("models", "compare", *models, "--input", str(customers_file), env=env))
    for line in (stored, on_file):
        assert "the models take different features" in line
        assert "test-rfm-k4 takes recency_days, frequency, monetary" in line
        assert "test-bank-k5 takes age, balance, job, marital, education, housing" in line
    assert "--input FILE" in stored
    assert "the input's columns are customer_id, recency_days, frequency, monetary" in on_file
