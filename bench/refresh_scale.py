"""What keeping a million customers' segments current with time costs.

A fresh PostgreSQL database gets 1,000,000 customers' purchase aggregates, drawn from the real
Online Retail customers (each synthetic customer is a real customer's recency, frequency and
spend, jittered: recency ±3 days, spend times lognormal(0, 0.1)), loaded with COPY and marked due.
The service's refresher (app.service.refresher, in this process, the clock set by hand) then:

1. scores everyone (the first full pass: every membership and `entered` event is new);
2. after the clock moves one day, re-scores only the customers due (their due times are exact:
   app.scoring.horizon), and again the next day;
3. re-scores everyone again, as a model without exact due times would every day (the periodic
   fallback), for comparison.

Writes the "refresh_scale" section of bench/RESULTS.md.

Usage: python bench/refresh_scale.py [--customers 1000000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.audience.erasure import IdHasher  # noqa: E402
from app.clock import ManualClock  # noqa: E402
from app.lifecycle.holder import ModelHolder  # noqa: E402
from app.lifecycle.registry import ModelRegistry  # noqa: E402
from app.lifecycle.shadow import ShadowScorer  # noqa: E402
from app.scoring.model import SegmentModel  # noqa: E402
from app.service.assignments import AssignmentWriter  # noqa: E402
from app.service.refresher import Refresher  # noqa: E402
from app.service.store import Store  # noqa: E402
from app.store.driver import copy_in  # noqa: E402
from bench.run import bench_database, real_customers, write_section  # noqa: E402

MODEL_DIR = ROOT / "models" / "online-retail-rfm-k5"
NOW = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=5_000)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    model = SegmentModel.load(MODEL_DIR)
    figures: list[tuple[str, int, float]] = []
    with bench_database(args.database_url) as url:
        engine = create_engine(url)
        clock = ManualClock(NOW)
        started = time.perf_counter()
        load(engine, args.customers)
        load_seconds = time.perf_counter() - started
        ModelRegistry(engine, clock).bootstrap(model, activate=True)
        store = Store(engine)
        models = ModelHolder(model)
        refresher = Refresher(
            models,
            store,
            AssignmentWriter(store, IdHasher("bench-erasure-key")),
            ShadowScorer(models),
            clock,
            every_seconds=60,
            chunk=args.chunk,
        )
        figures.append(("first full pass: everyone scored", *timed(refresher)))
        for day in (1, 2):
            clock.set(NOW + timedelta(days=day))
            figures.append((f"day {day}: only the customers due", *timed(refresher)))
        with engine.begin() as conn:  # the periodic fallback: everyone due every day
            conn.execute(text("UPDATE customer_activity SET due_at = :now"), {"now": clock.now()})
        figures.append(("everyone again (the periodic fallback's daily cost)", *timed(refresher)))
        engine.dispose()
    report = _report(args, load_seconds, figures)
    print(report)
    write_section(ROOT / "bench" / "RESULTS.md", "refresh_scale", report)


def load(engine: object, customers: int) -> None:
    """COPY `customers` synthetic aggregates drawn from the real customers, all due now."""
    real = real_customers().reset_index()
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(real), customers)
    recency = np.maximum(real["recency_days"].to_numpy()[picks] + rng.integers(-3, 4, customers), 0)
    orders = real["frequency"].to_numpy()[picks]
    spend = np.round(real["monetary"].to_numpy()[picks] * rng.lognormal(0, 0.1, customers), 2)
    seconds = rng.integers(0, 86_400, customers)
    midnight = NOW.replace(hour=0, minute=0)
    lines = []
    for i in range(customers):
        last = midnight - timedelta(days=int(recency[i])) + timedelta(seconds=int(seconds[i]))
        last = min(last, NOW)
        first = last - timedelta(days=int(orders[i]) * 20)
        lines.append(
            f"syn-{i:07d}\t{first.isoformat()}\t{last.isoformat()}\t{int(orders[i])}\t"
            f"{Decimal(repr(float(spend[i])))}\t{NOW.isoformat()}\t{NOW.isoformat()}\tassignment\n"
        )
    columns = "customer_id, first_purchase_at, last_purchase_at, orders, spend, updated_at, due_at, due_cause"
    with engine.begin() as conn:  # type: ignore[attr-defined]
        for start in range(0, customers, 100_000):
            copy_in(
                conn,
                f"COPY customer_activity ({columns}) FROM STDIN",
                "".join(lines[start : start + 100_000]),
            )
        conn.execute(text("ANALYZE customer_activity"))


def timed(refresher: Refresher) -> tuple[int, float]:
    started = time.perf_counter()
    done = refresher.refresh_due()
    return done, time.perf_counter() - started


def _report(
    args: argparse.Namespace, load_seconds: float, figures: list[tuple[str, int, float]]
) -> str:
    lines = [
        "## Keeping a million customers current with time (bench/refresh_scale.py)",
        "",
        f"`python bench/refresh_scale.py --customers {args.customers} --chunk {args.chunk}` on "
        f"{platform.node()} ({os.cpu_count()} cores), {datetime.now(UTC):%Y-%m-%d}: "
        f"{args.customers:,} customers' aggregates drawn from the real Online Retail customers, "
        f"COPYed in {load_seconds:.0f} s; one refresher (this process) on PostgreSQL on the "
        "same two cores, chunks of "
        f"{args.chunk:,} customers a transaction (history, membership, feed and due time written).",
        "",
        "| pass | customers re-scored | seconds | customers/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, done, seconds in figures:
        lines.append(f"| {name} | {done:,} | {seconds:.1f} | {done / seconds:,.0f} |")
    first = figures[0]
    days = [f for f in figures if f[0].startswith("day")]
    share = sum(d[1] for d in days) / len(days) / args.customers
    lines += [
        "",
        f"A day of time moves {share:.2%} of the customers; re-scoring only them costs "
        f"{sum(d[2] for d in days) / len(days):.1f} s a day against "
        f"{figures[-1][2]:.0f} s for everyone ({first[1]:,} on the first pass took {first[2]:.0f} s).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
