"""Automatic model versions name their data: two models trained the same day with the same k on
other data get two versions and both register; the same data and options give the same version,
and training or registering it again changes nothing."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from app.cli import cli
from tests.conftest import clear_tables, synthetic_transactions

COLUMNS = ["--customer", "customer", "--time", "time", "--amount", "amount"]
COLUMNS += ["--invoice", "invoice"]


def train(data: Path, out: Path, *options: str) -> tuple[str, str]:
    """The version printed on stdout, and stderr with white space folded."""
    args = ["train", "transactions", str(data), *COLUMNS, "--segments", "4", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, *options])
    assert result.exit_code == 0, result.output
    return result.stdout.strip(), " ".join(result.stderr.split())


def register(database_url: str, folder: Path) -> str:
    result = CliRunner().invoke(
        cli, ["models", "register", str(folder)], env={"DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def registered_versions(database_url: str) -> list[str]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version FROM model_versions ORDER BY version")).all()
    engine.dispose()
    return [row[0] for row in rows]


def test_same_day_same_k_other_data_two_versions_both_register(
    database_url: str, tmp_path: Path
) -> None:
    clear_tables(database_url)
    january = synthetic_transactions(tmp_path / "january.csv", customers=200, seed=1)
    february = synthetic_transactions(tmp_path / "february.csv", customers=200, seed=2)
    out = tmp_path / "models"
    first, _ = train(january, out)
    second, _ = train(february, out)

    today = f"{datetime.now(UTC):%Y-%m-%d}"
    for version in (first, second):
        assert re.fullmatch(rf"{today}-rfm-k4-[0-9a-f]{{6}}", version), version
    assert first != second
    assert (out / first / "manifest.json").is_file()
    assert (out / second / "manifest.json").is_file()
    assert register(database_url, out / first) == first
    assert register(database_url, out / second) == second
    assert registered_versions(database_url) == sorted([first, second])


def test_the_same_data_and_options_give_the_same_version_and_change_nothing(
    database_url: str, tmp_path: Path
) -> None:
    clear_tables(database_url)
    data = synthetic_transactions(tmp_path / "transactions.csv", customers=200, seed=3)
    version, said = train(data, tmp_path / "a")
    assert said.startswith("wrote "), said
    manifest = (tmp_path / "a" / version / "manifest.json").read_bytes()

    # again into the same folder: the same model, kept as it is
    again, said = train(data, tmp_path / "a")
    assert again == version
    assert "holds this model already" in said
    assert (tmp_path / "a" / version / "manifest.json").read_bytes() == manifest

    # again elsewhere: the same version (its skops bytes differ), and registering both folders
    # is one registration
    elsewhere, _ = train(data, tmp_path / "b")
    assert elsewhere == version
    assert register(database_url, tmp_path / "a" / version) == version
    assert register(database_url, tmp_path / "b" / version) == version
    assert registered_versions(database_url) == [version]

    # the same file under another name is the same data
    renamed = tmp_path / "renamed.csv"
    renamed.write_bytes(data.read_bytes())
    assert train(renamed, tmp_path / "c")[0] == version

    # any option that shapes the fit is another model, and another version
    assert train(data, tmp_path / "a", "--seed", "1")[0] != version
    assert train(data, tmp_path / "a", "--as-of", "2024-08-01")[0] != version


def test_an_explicit_version_is_used_as_given(tmp_path: Path) -> None:
    data = synthetic_transactions(tmp_path / "transactions.csv", customers=200, seed=4)
    assert train(data, tmp_path / "m", "--version", "spring-campaign")[0] == "spring-campaign"
    result = CliRunner().invoke(
        cli,
        [
            *["train", "transactions", str(data), *COLUMNS, "--segments", "4"],
            *["--out", str(tmp_path / "m"), "--version", "spring-campaign"],
        ],
    )
    assert result.exit_code == 2  # an explicit name is never reused silently
    assert "exists already" in result.output
