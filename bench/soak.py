"""A soak (issue 13): mixed traffic at a steady rate against `segments serve --workers 2` for a
long time (30 minutes by default; not in CI), on a fresh database.

`python bench/soak.py [--minutes 30] [--rate 150]` sends, at a fixed rate whatever the answers
take, a mix of real clients' calls: single assignments stored (some with an Idempotency-Key and
observed_at) and scored only, batches of 100, single purchase events, reads of a customer's
segment and audience pages. It records every answer's latency and status, samples each worker's
RSS every minute, and at the end checks that every acknowledged assignment and event is in
PostgreSQL. The figures go to bench/RESULTS.md (section soak): RSS per worker at start and end,
p99 per 5 minutes, errors, acknowledged rows found.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    add_database_option,
    bench_database,
    real_customers,
    rss_mb,
    server,
    write_section,
)

# share of each kind of call in the mix
MIX = {
    "assign": 40,
    "assign keyed": 10,
    "score only": 15,
    "batch 100": 5,
    "event": 15,
    "read segment": 10,
    "audience page": 5,
}


def workers_of(pid: int) -> list[int]:
    """The worker processes of the server (its children started by multiprocessing's spawn,
    not its resource tracker)."""
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


class Soak:
    def __init__(self, base: str, customers: list[dict[str, float | int]]) -> None:
        self.base = base
        self.customers = customers
        self.run = uuid.uuid4().hex[:6]
        self.counter = itertools.count()
        self.latencies: list[tuple[float, float]] = []  # (seconds since start, ms)
        self.errors: Counter[str] = Counter()
        self.acknowledged: set[str] = set()  # customers whose stored assignment was answered 200
        self.readable: list[str] = []  # the same, to pick one at random from (cheaply)
        self.events: set[str] = set()  # event ids answered 200
        self.started = time.monotonic()

    def features(self) -> dict[str, float | int]:
        return random.choice(self.customers)

    async def call(self, client: httpx2.AsyncClient, kind: str) -> None:
        n = next(self.counter)
        customer = f"soak-{self.run}-{n}"
        sent = time.monotonic()
        stored: list[str] = []
        try:
            if kind in ("assign", "assign keyed"):
                body: dict[str, Any] = {"customer_id": customer, "features": self.features()}
                headers = {}
                if kind == "assign keyed":
                    headers["Idempotency-Key"] = f"{self.run}-{n}"
                    observed = datetime.now(UTC) - timedelta(minutes=random.randint(0, 600))
                    body["observed_at"] = observed.isoformat()
                answer = await client.post("/v1/assignments", json=body, headers=headers)
                stored = [customer]
            elif kind == "score only":
                body = {"customer_id": customer, "features": self.features()}
                answer = await client.post("/v1/assignments?persist=false", json=body)
            elif kind == "batch 100":
                ids = [f"{customer}-{i}" for i in range(100)]
                rows = [{"customer_id": c, "features": self.features()} for c in ids]
                answer = await client.post("/v1/assignments/batch", json={"customers": rows})
                stored = ids
            elif kind == "event":
                event = {
                    "event_id": customer,
                    "customer_id": customer,
                    "occurred_at": (datetime.now(UTC) - timedelta(days=3)).isoformat(),
                    "amount": round(random.uniform(5, 500), 2),
                    "type": "order",
                }
                answer = await client.post("/v1/events", json={"events": [event]})
            elif kind == "read segment":
                known = random.choice(self.readable) if self.readable else "none"
                answer = await client.get(f"/v1/customers/{known}/segment")
            else:
                answer = await client.get("/v1/segments/champions/members?limit=1000")
        except httpx2.HTTPError as exc:
            self.errors[f"{kind}: {type(exc).__name__}"] += 1
            return
        elapsed = time.monotonic()
        self.latencies.append((sent - self.started, (elapsed - sent) * 1000))
        expected_404 = kind == "read segment" and not self.readable
        if answer.status_code != 200 and not expected_404:
            self.errors[f"{kind}: {answer.status_code}"] += 1
            return
        self.acknowledged.update(stored)
        self.readable.extend(stored)
        if kind == "event":
            self.events.add(customer)

    async def drive(self, rate: float, seconds: float, on_minute: Any) -> None:
        kinds = list(MIX)
        weights = list(MIX.values())
        # idle connections let go of before the server's keep-alive closes them (5 s): a client
        # that reuses one as the server closes it gets no answer (RemoteProtocolError), the
        # usual HTTP/1.1 race, so a client should expire them first
        limits = httpx2.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=3)
        async with httpx2.AsyncClient(base_url=self.base, timeout=30, limits=limits) as client:
            tasks: set[asyncio.Task[None]] = set()
            interval = 1 / rate
            next_at = time.monotonic()
            next_minute = self.started + 60
            while time.monotonic() - self.started < seconds:
                kind = random.choices(kinds, weights)[0]
                task = asyncio.create_task(self.call(client, kind))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += interval  # a fixed schedule: a slow answer does not slow the sender
                if time.monotonic() >= next_minute:
                    on_minute()
                    next_minute += 60
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=150, help="requests per second, all kinds")
    add_database_option(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    frame = real_customers().reset_index()
    customers = [
        {"recency_days": float(r), "frequency": int(f), "monetary": float(m)}
        for r, f, m in zip(
            frame["recency_days"], frame["frequency"], frame["monetary"], strict=True
        )
    ]
    with (
        bench_database(args.database) as url,
        server("ours, 2 workers", url) as (base, pid),
    ):
        time.sleep(5)  # both workers up
        workers = workers_of(pid)
        rss: dict[int, list[float]] = {w: [rss_mb(w)[0]] for w in workers}

        def sample() -> None:
            for worker in workers:
                rss[worker].append(rss_mb(worker)[0])
            done = len(soak.latencies)
            print(
                f"{(time.monotonic() - soak.started) / 60:.0f} min: {done} answers, "
                f"errors {dict(soak.errors)}, RSS {[round(v[-1]) for v in rss.values()]}",
                flush=True,
            )

        soak = Soak(base, customers)
        asyncio.run(soak.drive(args.rate, args.minutes * 60, sample))
        sample()
        engine = create_engine(url)
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT count(*) FROM memberships WHERE customer_id = ANY(:ids)"),
                {"ids": sorted(soak.acknowledged)},
            ).scalar_one()
            events = conn.execute(
                text("SELECT count(*) FROM purchase_events WHERE event_id = ANY(:ids)"),
                {"ids": sorted(soak.events)},
            ).scalar_one()
        engine.dispose()
    write_section(args.out, "soak", report(args, soak, rss, found, events))
    print(f"wrote {args.out}")


def report(
    args: argparse.Namespace, soak: Soak, rss: dict[int, list[float]], found: int, events: int
) -> str:
    windows: dict[int, list[float]] = {}
    for at, ms in soak.latencies:
        windows.setdefault(int(at // 300), []).append(ms)
    lines = [
        "## Soak (bench/soak.py)",
        "",
        f"`python bench/soak.py --minutes {args.minutes:g} --rate {args.rate:g}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `segments serve --workers 2` on one "
        "core (CPU 0), a fresh database, the load generator on CPU 1 sending a fixed schedule of "
        f"{', '.join(f'{share}% {kind}' for kind, share in MIX.items())}.",
        "",
        f"- Answers: {len(soak.latencies):,}; errors: {sum(soak.errors.values())}"
        + (f" ({dict(soak.errors)})" if soak.errors else ""),
        f"- Acknowledged stored customers found in memberships: {found:,} of {len(soak.acknowledged):,}; "
        f"acknowledged events found: {events:,} of {len(soak.events):,}",
        "- RSS per worker, MB (start → end, every minute's max): "
        + "; ".join(
            f"worker {i + 1}: {samples[0]:.0f} → {samples[-1]:.0f} (max {max(samples):.0f})"
            for i, samples in enumerate(rss.values())
        ),
        "",
        "| minutes | answers | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for window, values in sorted(windows.items()):
        values.sort()
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        lines.append(
            f"| {window * 5}–{window * 5 + 5} | {len(values):,} | "
            f"{statistics.median(values):.1f} | {p99:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
