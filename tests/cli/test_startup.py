"""`segments serve` refuses to start with settings it cannot run with, and says everything wrong
at once, in a few lines, exit status 2 and no traceback, with or without --model."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from app.cli import cli


def _serve(env: dict[str, str], *options: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(cli, ["serve", *options], env=env)
    return result.exit_code, " ".join(result.output.split()), result.exception


@pytest.mark.parametrize("explicit_model", [False, True], ids=["default-model", "--model"])
def test_every_startup_problem_is_reported_together(
    database_url: str, rfm_model_dir: Path, explicit_model: bool
) -> None:
    unknown_database = make_url(database_url).set(database="no_such_database")
    env = {
        "DATABASE_URL": unknown_database.render_as_string(hide_password=False),
        "SEGMENTS_API_KEYS": "",
        "SEGMENTS_ALLOW_ANONYMOUS": "false",
        "SEGMENTS_ERASURE_KEY": "",
    }
    options = ["--model", str(rfm_model_dir)] if explicit_model else []
    code, output, exception = _serve(env, *options)
    assert code == 2, output
    assert isinstance(exception, SystemExit)  # a clean exit, not a traceback
    assert "3 problems" in output
    assert "SEGMENTS_API_KEYS" in output
    assert "SEGMENTS_ERASURE_KEY is not set" in output
    assert 'database "no_such_database" does not exist' in output
    assert len(output) < 1_500  # a few lines, not a wall


def test_invalid_values_are_named_by_their_variables() -> None:
    code, output, exception = _serve(
        {"SEGMENTS_MAX_BATCH": "lots", "SEGMENTS_PHONE_DEFAULT_REGION": "XX"}
    )
    assert code == 2, output
    assert isinstance(exception, SystemExit)
    assert "2 problems" in output
    assert "SEGMENTS_MAX_BATCH" in output
    assert "SEGMENTS_PHONE_DEFAULT_REGION" in output


def test_a_database_that_is_not_postgresql_is_refused_without_echoing_the_url() -> None:
    code, output, _ = _serve({"DATABASE_URL": "mysql://admin:hunter2@db/segments"})
    assert code == 2, output
    assert "DATABASE_URL" in output
    assert "must be a PostgreSQL URL" in output
    assert "hunter2" not in output


def test_postgres_urls_are_accepted(database_url: str) -> None:
    """Heroku-style postgres:// and plain postgresql:// name the same server as +psycopg."""
    for scheme in ("postgres", "postgresql"):
        url = make_url(database_url).set(drivername=scheme)
        result = CliRunner().invoke(
            cli, ["migrate"], env={"DATABASE_URL": url.render_as_string(hide_password=False)}
        )
        assert result.exit_code == 0, result.output
