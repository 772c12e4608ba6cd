"""`segments drift`: drift per period from the stored history, as a table and a chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from app.cli import cli
from app.metrics.history import drift_history, parse_span
from app.scoring.model import SegmentModel
from app.store.assignments import AssignmentBatch, store_batch
from tests.conftest import DEFAULT_MODELS, TEST_ID_HASH, assignment_service, clear_tables

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)


def _store_day(engine_url: str, frame: pd.DataFrame, day: datetime, prefix: str) -> None:
    """Score real customers as the service does and store them as if assigned on `day`."""
    customers = [
        {
            "customer_id": f"{prefix}{i}",
            "features": {"recency_days": float(r), "frequency": int(f), "monetary": float(m)},
        }
        for i, (r, f, m) in enumerate(
            zip(frame["recency_days"], frame["frequency"], frame["monetary"], strict=True)
        )
    ]
    with assignment_service(engine_url, DEFAULT_MODELS) as service:
        batch = service.assign_batch({"customers": customers}, persist=False)
    moments = [day + timedelta(seconds=i) for i in range(len(batch))]
    engine = create_engine(engine_url)
    with engine.begin() as conn:
        store_batch(
            conn, AssignmentBatch(**{**batch.__dict__, "assigned_at": moments}), TEST_ID_HASH
        )
    engine.dispose()


def test_spans_parse_and_bad_ones_are_refused() -> None:
    assert parse_span("30d") == timedelta(days=30)
    assert parse_span("12h") == timedelta(hours=12)
    for bad in ("", "3x", "0d", "d"):
        with pytest.raises(ValueError, match="span"):
            parse_span(bad)


def test_history_is_quiet_then_shifts_and_says_insufficient(
    database_url: str,
    online_retail_rfm: pd.DataFrame,
    tmp_path: Path,
) -> None:
    clear_tables(database_url)
    start = NOW - timedelta(days=4)
    sample = online_retail_rfm.sample(n=1500, replace=True, random_state=5)
    _store_day(database_url, sample, start, "d0-")  # day 0: customers like training
    _store_day(database_url, sample.head(40), start + timedelta(days=1), "d1-")  # day 1: too few
    # day 2 nothing; day 3: customers lapsing and spending more
    shifted = sample.assign(
        recency_days=sample["recency_days"] + 150, monetary=sample["monetary"] * 4
    )
    _store_day(database_url, shifted, start + timedelta(days=3), "d3-")

    model = SegmentModel.load(DEFAULT_MODELS)
    engine = create_engine(database_url)
    periods = drift_history(
        engine, model, since=timedelta(days=4), every=timedelta(days=1), min_samples=100, now=NOW
    )
    engine.dispose()
    assert [p.samples for p in periods] == [1500, 40, 0, 1500]
    assert periods[0].figures is not None
    assert periods[0].figures.segment_psi < 0.05
    assert periods[1].figures is None  # 40 < 100: "insufficient", no false alarm
    assert periods[2].figures is None
    assert periods[3].figures is not None
    assert periods[3].figures.segment_psi > 0.25

    chart = tmp_path / "drift.png"
    result = CliRunner().invoke(
        cli,
        [
            "drift",
            "--since",
            "4d",
            "--every",
            "1d",
            "--model",
            str(DEFAULT_MODELS),
            "--chart",
            str(chart),
        ],
        env={"DATABASE_URL": database_url},
    )
    # the CLI measures up to now, so today's empty periods follow; the stored days are there
    assert result.exit_code == 0, result.output
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
