"""The house rules hold: formatted, lint-clean and type-checked (what `make lint` runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.settings import PROJECT_ROOT


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "format", "--check", "."],
        ["ruff", "check", "."],
        ["mypy", "app", "tests", "bench"],
    ],
    ids=["ruff-format", "ruff-check", "mypy"],
)
def test_tool_is_clean(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
