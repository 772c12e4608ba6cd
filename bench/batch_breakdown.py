"""Where a persisted batch of 10,000 assignments spends its storage time (issue 14).

`python bench/batch_breakdown.py` writes the real Online Retail customers' batch (the body
`make bench` sends) as the service writes it, on a fresh database, part by part, and writes the
section `batch breakdown` of bench/RESULTS.md:

- history: its COPY text built, sent, and the memberships' COPY text (with the id hashes)
  built while the server takes the history in, then the COPY's end;
- the memberships COPYed into the session's staging table;
- merge: the customers' locks, the membership merge and COMMIT, one round trip; and, from
  EXPLAIN ANALYZE of the same statement, its main steps: reading the staged rows, the tombstone
  probes, finding the memberships, updating and inserting them, the feed events.

Two cases: the batch's customers new (10,000 inserts and `entered` events), then the same batch
again (10,000 updates that keep every segment: what `make bench`'s batch scenario repeats).
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    add_database_option,
    bench_database,
    real_customers,
    scored_batch,
    write_bodies,
    write_section,
)

REPEATS = 7
# EXPLAIN ANALYZE nodes worth naming: (label, a pattern of the node's line)
_STEPS = (
    ("rows read from the staging table", r"Seq Scan on staged_memberships"),
    ("tombstone probes", r"CTE suppressed\n\s*->"),
    ("memberships found", r"CTE found\n\s*->"),
    ("known customers' memberships updated", r"Update on memberships"),
    ("new customers' memberships inserted", r"Insert on memberships"),
    ("feed events insert", r"Insert on membership_events"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_database_option(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    from app.audience.erasure import IdHasher
    from app.settings import Settings
    from app.store.engine import make_engine

    with tempfile.TemporaryDirectory() as folder:
        batch = scored_batch(write_bodies(Path(folder), real_customers())["batch10000"])
    hasher = IdHasher("bench-erasure-key")
    results: dict[str, dict[str, float]] = {}
    for case in ("new customers", "the same customers again"):
        timings: dict[str, list[float]] = {}
        steps: dict[str, list[float]] = {}
        for _ in range(REPEATS):
            # the timed write and the EXPLAIN each on a database of its own: EXPLAIN ANALYZE
            # really writes (then rolls back), which would leave the timed write dead rows
            for explained in (False, True):
                with bench_database(args.database) as url:
                    engine = make_engine(Settings().with_database(url))
                    if case != "new customers":  # the customers stored once already
                        with engine.connect() as conn:
                            _write(conn, batch, hasher)
                    with engine.connect() as conn:
                        if explained:
                            for name, ms in _explained(conn, batch, hasher).items():
                                steps.setdefault(name, []).append(ms)
                        else:
                            for name, ms in _write(conn, batch, hasher).items():
                                timings.setdefault(name, []).append(ms)
                    engine.dispose()
        results[case] = {name: statistics.median(v) for name, v in timings.items()}
        results[case] |= {
            f"merge: {name}, done at": statistics.median(v) for name, v in steps.items()
        }
        print(case, {k: round(v, 1) for k, v in results[case].items()}, flush=True)
    write_section(args.out, "batch breakdown", _report(results))


def _write(conn: Any, batch: Any, hasher: Any) -> dict[str, float]:
    """The service's write of the batch (app.store.assignments.store_batch), timed part by part."""
    from app.store import assignments as store
    from app.store.customer_locks import lock_statement
    from app.store.driver import copying, pipelined
    from app.store.membership_merge import merge_many, stage_members
    from app.store.tables import Cause

    with conn.begin():
        conn.exec_driver_sql("SELECT 1")  # BEGIN sent: not part of the COPY's time
        started = time.perf_counter()
        with copying(conn, store._COPY_HISTORY) as copy:
            for chunk in store.history_chunks(batch):
                copy.write(chunk)
            sent = time.perf_counter()
            staged = store._members_text(batch, hasher, None)
            members_built = time.perf_counter()
        copied = time.perf_counter()
        stage_members(conn, staged)
        staged_at = time.perf_counter()
        lock = lock_statement(batch.customer_ids)
        pipelined(conn, merge_many(lock, Cause.ASSIGNMENT, False, committing=True), commit=True)
        merged = time.perf_counter()
    return {
        "history's COPY text built and sent, a chunk at a time": (sent - started) * 1000,
        "memberships' COPY text built (the server taking the history meanwhile)": (
            members_built - sent
        )
        * 1000,
        "history COPY finished after that": (copied - members_built) * 1000,
        "memberships staged (COPY)": (staged_at - copied) * 1000,
        "locks, merge and COMMIT (one round trip)": (merged - staged_at) * 1000,
        "total": (merged - started) * 1000,
    }


def _explained(conn: Any, batch: Any, hasher: Any) -> dict[str, float]:
    from app.store import assignments as store
    from app.store.customer_locks import lock_statement
    from app.store.membership_merge import merge_many, stage_members
    from app.store.tables import Cause

    lock = lock_statement(batch.customer_ids)
    _, (statement, parameters), _ = merge_many(lock, Cause.ASSIGNMENT, False, committing=False)
    sql = str(statement.compile(dialect=conn.dialect))
    transaction = conn.begin()
    stage_members(conn, store._members_text(batch, hasher, None))
    cursor = conn.connection.driver_connection.cursor()
    cursor.execute("EXPLAIN (ANALYZE, FORMAT TEXT) " + sql, parameters)
    plan = "\n".join(row[0] for row in cursor.fetchall())
    transaction.rollback()
    steps = {}
    for name, pattern in _STEPS:
        found = re.search(pattern, plan)
        if found is None:
            continue
        line = plan[found.start() :].split("\n")
        timed = next(part for part in line if "actual time=" in part)
        steps[name] = float(re.search(r"actual time=[\d.]+\.\.([\d.]+)", timed).group(1))  # type: ignore[union-attr]
    return steps


def _report(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "## Batch breakdown: where a persisted batch of 10,000 spends its storage time",
        "",
        f"`python bench/batch_breakdown.py` on {datetime.now(UTC):%Y-%m-%d}, "
        f"{platform.machine()}: the real Online Retail customers' batch of 10,000 (`make "
        f"bench`'s body) written as the service writes it, on a fresh database each time, "
        f"medians of {REPEATS}. The merge's steps come from EXPLAIN ANALYZE of the same "
        "statement: the moment each step was done, in ms into the statement (its CTEs feed "
        "each other, so the steps overlap: the gaps between them say what each added).",
        "",
        "| part | " + " | ".join(f"{case} (ms)" for case in results) + " |",
        "| --- | " + " | ".join("---:" for _ in results) + " |",
    ]
    names = list(next(iter(results.values())))
    for case_results in results.values():
        names += [n for n in case_results if n not in names]
    for name in names:
        cells = [f"{r[name]:.1f}" if name in r else "" for r in results.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
