"""The embedded PostgreSQL is shared by the commands using it and stopped by the last of them,
even when the one that started it is killed; its quick start never opens a network port to
anonymous callers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.store.embedded import embedded_database, embedded_erasure_key
from tests.servers import processes

pytestmark = pytest.mark.slow
USE_FOR = """
import sys, time
from pathlib import Path
from app.store.embedded import embedded_database
with embedded_database(Path(sys.argv[1])):
    print("using", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _server_running(data: Path) -> bool:
    return bool(
        processes(lambda _, command: b"postgres" in command[0] and str(data).encode() in command)
    )


def _user(data: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process using the server for `seconds`; returns once it is using it."""
    process = subprocess.Popen(
        [sys.executable, "-c", USE_FOR, str(data), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "using"
    return process


def test_the_last_user_stops_the_server_whoever_started_it(tmp_path: Path) -> None:
    data = tmp_path / "postgres"
    starter = _user(data, 60)  # starts the server, then is killed without a word
    with embedded_database(data) as joined:
        assert not joined.started  # it was running: this process only joined
        other = _user(data, 1)
        starter.kill()
        starter.communicate()
        assert _server_running(data)  # two users left
        other.communicate()
        assert _server_running(data)  # this one is still using it
    assert not _server_running(data)  # the last user let go: stopped


def test_the_quick_start_erasure_key_is_made_once(tmp_path: Path) -> None:
    data = tmp_path / "postgres"
    key = embedded_erasure_key(data)
    assert len(key) > 30
    assert embedded_erasure_key(data) == key
    assert (tmp_path / "erasure-key").stat().st_mode & 0o077 == 0  # its owner's alone


def test_the_quick_start_beyond_loopback_needs_keys(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "TEST_DATABASE_URL"} and not k.startswith("SEGMENTS_")
    }
    data = tmp_path / "postgres"
    result = CliRunner().invoke(
        cli,
        ["serve", "--host", "0.0.0.0", "--port", "1"],
        env={**env, "SEGMENTS_EMBEDDED_DIR": str(data)},
    )
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert "no API keys are configured" in output
    deadline = time.monotonic() + 10
    while _server_running(data) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _server_running(data)
