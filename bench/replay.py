"""Live segments on real data: Online Retail replayed day by day through POST /v1/events.

The service runs in this process (the real ASGI app over a fresh PostgreSQL database, its clock
set to each day in turn, as issue 12 asks); every row with a customer goes in, cancellations
included, each day's rows in one request per group of customers (so a customer is scored once
a day, after all of their day). After each day the refresher re-scores the customers due, then:

- a random sample of customers' stored segments is compared with the model's answer on
  features recomputed from the raw rows as of that day by `compute_rfm` (the training code):
  the stale count must be zero every day;
- every customer's segment as of that day is computed offline from the raw rows, and the day's
  transitions (a customer entering a segment, or moving) are compared with the change feed's
  events of that day: the feed must hold exactly those.

After the last day, the clock moves on 30 and 90 days with no more events: the report says how
many memberships would then be stale without re-scoring on time, and that with it none are.
Writes the "replay" section of bench/RESULTS.md.

Usage: python bench/replay.py [--database-url URL] [--sample 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_time
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.clock import ManualClock  # noqa: E402
from app.datafiles import normalise_ids, read_table  # noqa: E402
from app.main import create_app  # noqa: E402
from app.scoring.model import SegmentModel  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.training.rfm import (  # noqa: E402
    TransactionColumns,
    compute_rfm,
    exact_amount,
    is_purchase,
    order_key,
    rfm_features,
)
from bench.run import bench_database, write_section  # noqa: E402

DATA = ROOT / "data" / "online-retail" / "online_retail.csv.gz"
MODEL_DIR = ROOT / "models" / "online-retail-rfm-k5"
COLUMNS = TransactionColumns(
    "CustomerID", "InvoiceDate", quantity="Quantity", price="UnitPrice", invoice="InvoiceNo"
)
BATCH = 5_000  # rows per request at most; a customer's day never splits across requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a PostgreSQL server where a fresh database may be created",
    )
    parser.add_argument("--sample", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    raw = read_table(DATA, COLUMNS.needed())
    rows = _rows(raw)
    model = SegmentModel.load(MODEL_DIR)
    days = sorted(rows["day"].unique())
    rng = np.random.default_rng(args.seed)
    sample = sorted(rng.choice(sorted(rows["customer"].unique()), args.sample, replace=False))
    sample_raw = raw[normalise_ids(raw[COLUMNS.customer]).isin(sample)].copy()
    sample_raw["_day"] = pd.to_datetime(sample_raw[COLUMNS.time], format="ISO8601").dt.date
    truth = OfflineSegments(model)
    report: dict[str, object] = {}
    started = time.perf_counter()
    with bench_database(args.database_url) as url:
        clock = ManualClock(datetime.combine(days[0], day_time(), UTC))
        settings = Settings(
            database_url=url,
            model_dir=MODEL_DIR,
            allow_anonymous=True,
            erasure_key="replay-" + "k" * 32,
            refresh_seconds=3600,  # rounds are run here, once per day
            max_batch=BATCH,
        )
        engine = create_engine(url)
        stale_days: list[int] = []
        feed_mismatch_days: list[str] = []
        transitions: dict[date, Counter[str]] = {}
        request_seconds: list[float] = []
        refresh_seconds: list[float] = []
        with TestClient(create_app(settings, clock)) as client:
            refresher = client.app_state["runtime"].refresher
            by_day = dict(tuple(rows.groupby("day", sort=True)))
            calendar = [days[0] + timedelta(days=n) for n in range((days[-1] - days[0]).days + 1)]
            for day in calendar:
                clock.set(datetime.combine(day, day_time(23, 59, 59), UTC))
                todays = by_day.get(day)
                if todays is not None:
                    for body in _bodies(todays):
                        began = time.perf_counter()
                        response = client.post(
                            "/v1/events",
                            content=body,
                            headers={"content-type": "application/json"},
                        )
                        request_seconds.append(time.perf_counter() - began)
                        if response.status_code != 200:
                            raise SystemExit(f"{day}: {response.status_code} {response.text[:300]}")
                    truth.add(todays)
                began = time.perf_counter()
                refresher.refresh_due()
                refresh_seconds.append(time.perf_counter() - began)
                expected = truth.segments(day)
                with engine.connect() as conn:
                    stored: dict[str, str] = dict(
                        conn.execute(text("SELECT customer_id, segment_key FROM memberships")).all()
                    )
                    fed = conn.execute(
                        text(
                            "SELECT customer_id, segment_key, cause FROM membership_events "
                            "WHERE event = 'entered' AND occurred_at >= :start "
                            "AND occurred_at < :end"
                        ),
                        {
                            "start": datetime.combine(day, day_time(), UTC),
                            "end": datetime.combine(day + timedelta(days=1), day_time(), UTC),
                        },
                    ).all()
                stale_days.append(_stale_in_sample(model, sample_raw, sample, stored, day))
                moved = truth.transitions(day)
                if sorted((c, k) for c, k, _ in fed) != sorted(moved.items()):
                    feed_mismatch_days.append(day.isoformat())
                transitions[day] = Counter(cause for _, _, cause in fed)
            last = calendar[-1]
            after: dict[int, dict[str, int]] = {}
            for ahead in (30, 90):
                moment = datetime.combine(last + timedelta(days=ahead), day_time(23, 59), UTC)
                clock.set(moment)
                expected = truth.segments(moment.date())
                refreshed = refresher.refresh_due()
                with engine.connect() as conn:
                    now_stored: dict[str, str] = dict(
                        conn.execute(text("SELECT customer_id, segment_key FROM memberships")).all()
                    )
                stale_with = sum(1 for c, k in expected.items() if now_stored.get(c) != k)
                after[ahead] = {
                    "refreshed": refreshed,
                    "stale_with_refresh": stale_with,
                }
            # the memberships without step 4: the segment each customer's last event gave them
            event_only = _segments_at_last_purchase(model, truth)
            for ahead in (30, 90):
                expected = truth.segments(last + timedelta(days=ahead))
                after[ahead]["stale_without_time_rescoring"] = sum(
                    1 for c, k in expected.items() if event_only[c] != k
                )
        engine.dispose()
    report.update(
        days=len(calendar),
        trading_days=len(days),
        rows=len(rows),
        customers=len(truth.last),
        sample=args.sample,
        stale_sample_total=sum(stale_days),
        stale_sample_worst_day=max(stale_days),
        feed_mismatch_days=feed_mismatch_days,
        transitions=transitions,
        after=after,
        request_p50_ms=statistics.median(request_seconds) * 1000,
        refresh_p50_ms=statistics.median(refresh_seconds) * 1000,
        refresh_max_ms=max(refresh_seconds) * 1000,
        seconds=time.perf_counter() - started,
    )
    text_out = _report(report)
    print(text_out)
    write_section(ROOT / "bench" / "RESULTS.md", "replay", text_out)
    if sum(stale_days) or feed_mismatch_days:
        raise SystemExit("stale segments or a feed that differs from the transitions: see above")


def _rows(raw: pd.DataFrame) -> pd.DataFrame:
    """Every row with a customer, as a shop would send it (cancellations included)."""
    frame = pd.DataFrame(
        {
            "customer": normalise_ids(raw[COLUMNS.customer]),
            "time": pd.to_datetime(raw[COLUMNS.time], format="ISO8601"),
            "amount": pd.to_numeric(raw["Quantity"]) * pd.to_numeric(raw["UnitPrice"]),
            "order": raw["InvoiceNo"].str.strip(),
        }
    ).dropna(subset=["customer"])
    frame["event_id"] = [f"or-{i}" for i in frame.index]
    frame["day"] = frame["time"].dt.date
    return frame


def _bodies(todays: pd.DataFrame) -> list[bytes]:
    """The day's rows as request bodies of at most BATCH rows, each customer's rows in one."""
    bodies: list[bytes] = []
    pending: list[dict[str, object]] = []
    for _, group in todays.groupby("customer", sort=False):
        events = [
            {
                "event_id": e,
                "customer_id": c,
                "occurred_at": t.isoformat() + "Z",
                "amount": a,
                "type": "order",
                "order_id": o,
            }
            for e, c, t, a, o in zip(
                group["event_id"],
                group["customer"],
                group["time"],
                group["amount"],
                group["order"],
                strict=True,
            )
        ]
        if pending and len(pending) + len(events) > BATCH:
            bodies.append(orjson.dumps({"events": pending}))
            pending = []
        pending.extend(events)
    if pending:
        bodies.append(orjson.dumps({"events": pending}))
    return bodies


class OfflineSegments:
    """Every customer's segment as of any day, from the raw rows, by the training rules."""

    def __init__(self, model: SegmentModel) -> None:
        self.model = model
        self.last: dict[str, date] = {}
        self.orders: dict[str, set[str]] = defaultdict(set)
        self.spend: dict[str, Decimal] = defaultdict(Decimal)
        self._previous: dict[str, str] = {}

    def add(self, todays: pd.DataFrame) -> None:
        for customer, moment, amount, order in zip(
            todays["customer"],
            todays["time"].dt.to_pydatetime(),
            todays["amount"],
            todays["order"],
            strict=True,
        ):
            if not is_purchase(amount, order):
                continue
            self.last[customer] = max(self.last.get(customer, moment.date()), moment.date())
            self.orders[customer].add(order_key(order, moment))
            self.spend[customer] += exact_amount(amount)

    def segments(self, as_of: date) -> dict[str, str]:
        customers = sorted(self.last)
        if not customers:
            return {}
        numeric = np.array(
            [
                rfm_features(self.last[c], len(self.orders[c]), self.spend[c], as_of)
                for c in customers
            ],
            dtype=np.float64,
        )
        clusters = self.model.score_arrays(numeric, []).clusters.tolist()
        keys = self.model.segment_keys_by_cluster
        return {c: keys[k] for c, k in zip(customers, clusters, strict=True)}

    def transitions(self, as_of: date) -> dict[str, str]:
        """Customers whose segment as of `as_of` differs from the day before (or is new)."""
        now = self.segments(as_of)
        moved = {c: k for c, k in now.items() if self._previous.get(c) != k}
        self._previous = now
        return moved


def _stale_in_sample(
    model: SegmentModel,
    sample_raw: pd.DataFrame,
    sample: list[str],
    stored: dict[str, str],
    day: date,
) -> int:
    """Sampled customers whose stored segment is not the model's answer on their features
    recomputed from the raw rows as of `day` by compute_rfm (customers with no purchase yet
    must have none stored)."""
    upto = sample_raw[sample_raw["_day"] <= day]
    expected: dict[str, str] = {}
    if len(upto):
        try:
            features = compute_rfm(upto, COLUMNS, as_of=day).features
        except Exception:  # no purchase left after dropping returns: nobody is expected
            features = pd.DataFrame()
        if len(features):
            scores = model.score_frame(features.reset_index(drop=True))
            keys = model.segment_keys_by_cluster
            expected = {
                c: keys[k] for c, k in zip(features.index, scores.clusters.tolist(), strict=True)
            }
    return sum(1 for c in sample if stored.get(c) != expected.get(c))


def _segments_at_last_purchase(model: SegmentModel, truth: OfflineSegments) -> dict[str, str]:
    """Each customer's segment as their last purchase left it (recency 0 that day): what a
    membership would still say without re-scoring on time."""
    customers = sorted(truth.last)
    numeric = np.array(
        [
            rfm_features(truth.last[c], len(truth.orders[c]), truth.spend[c], truth.last[c])
            for c in customers
        ],
        dtype=np.float64,
    )
    clusters = model.score_arrays(numeric, []).clusters.tolist()
    keys = model.segment_keys_by_cluster
    return {c: keys[k] for c, k in zip(customers, clusters, strict=True)}


def _report(r: dict[str, object]) -> str:
    transitions: dict[date, Counter[str]] = r["transitions"]  # type: ignore[assignment]
    by_time = [t["time"] for t in transitions.values()]
    by_events = [t["assignment"] for t in transitions.values()]
    after: dict[int, dict[str, int]] = r["after"]  # type: ignore[assignment]
    customers = r["customers"]
    lines = [
        "## Live segments on real data: Online Retail replayed day by day (bench/replay.py)",
        "",
        f"`python bench/replay.py` on {platform.node()} ({os.cpu_count()} cores), "
        f"{datetime.now(UTC):%Y-%m-%d}: the in-process ASGI app on a fresh PostgreSQL "
        f"database, the clock set to the end of each of {r['days']} calendar days "
        f"({r['trading_days']} with rows); {r['rows']:,} rows with a customer sent as events "
        f"(cancellations included), {customers:,} customers; the refresher run once a day. "
        f"{r['seconds']:.0f} s in all.",
        "",
        f"- **Zero stale**: of {r['sample']} random customers, checked every day against the "
        f"model's answer on features `compute_rfm` recomputes from the raw rows as of that day: "
        f"{r['stale_sample_total']} stale in all (worst day {r['stale_sample_worst_day']}).",
        f"- **The feed holds exactly the transitions**: every customer's segment computed offline "
        f"each day; days whose `entered` events differ from the day's transitions: "
        f"{len(r['feed_mismatch_days'])}"  # type: ignore[arg-type]
        f"{' (' + ', '.join(r['feed_mismatch_days'][:5]) + ')' if r['feed_mismatch_days'] else ''}.",  # type: ignore[index]
        f"- **Transitions per day**: moves by events (cause `assignment`) median "
        f"{statistics.median(by_events):.0f}, max {max(by_events)}; moves by time (cause `time`) "
        f"median {statistics.median(by_time):.0f}, max {max(by_time)}; "
        f"{sum(by_time):,} time moves in all.",
        f"- **Cost**: a day's request median {r['request_p50_ms']:.0f} ms; a day's refresher round "
        f"median {r['refresh_p50_ms']:.1f} ms, max {r['refresh_max_ms']:.0f} ms.",
        "",
        "After the last day, with no more events:",
        "",
        "| days later | stale without re-scoring on time | re-scored by the refresher | stale with it |",
        "| --- | --- | --- | --- |",
    ]
    for ahead, figures in after.items():
        lines.append(
            f"| {ahead} | {figures['stale_without_time_rescoring']:,} of {customers:,} "
            f"({figures['stale_without_time_rescoring'] / customers:.0%}) "  # type: ignore[operator]
            f"| {figures['refreshed']:,} | {figures['stale_with_refresh']} |"
        )
    lines += [
        "",
        '"Without re-scoring on time" is each customer\'s segment as their last purchase left '
        "it, which is what a membership said before issue 12's refresher.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
