"""Where one persisted single assignment's time goes, at one client (issue 14's breakdown).

`python bench/breakdown.py` measures, on a fresh database, each part on its own (medians of many
repeats) and the whole over HTTP (wrk, one connection), and writes the section `breakdown` of
bench/RESULTS.md:

- the floors: a round trip (`SELECT 1`) and a one-row autocommit INSERT (the commit floor);
- scoring: the service validating and scoring one request body (no storage);
- the group committer: a request handed to it and answered, with a write that does nothing;
  and, for comparison, a thread's hop (the way writes went before 239df98);
- the write: the service's transaction for one row (the customers' locks, then the merge with
  its history and feed events, committed in one round trip) awaited on the event loop's own
  connection, as the service does; and, for comparison, in a thread on a pooled connection;
- the whole: `POST /v1/assignments` persisted and `?persist=false` at c=1, p50, so HTTP and the
  framework are what the parts above leave.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    add_database_option,
    bench_database,
    real_customers,
    server,
    write_bodies,
    write_section,
    wrk,
)

REPEATS = 500
WRITE = "write on the event loop's connection (the service's way, one round trip)"


def median_ms(work: Callable[[], object], repeats: int = REPEATS) -> float:
    for _ in range(20):  # warm-up: prepared statements, caches
        work()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def parts(database_url: str) -> dict[str, float]:
    from app.audience.erasure import IdHasher
    from app.clock import SystemClock
    from app.errors import AppError
    from app.lifecycle.holder import ModelHolder
    from app.lifecycle.shadow import ShadowScorer
    from app.scoring.model import SegmentModel
    from app.service.assignments import AssignmentService, AssignmentWriter
    from app.service.idempotency import PendingRow
    from app.service.store import Store
    from app.settings import DEFAULT_MODELS_DIR, Settings
    from app.store.assignments import AssignmentBatch
    from app.store.engine import make_engine
    from app.store.group_commit import GroupCommitter, in_thread
    from app.store.loop_connection import LoopConnection

    settings = Settings().with_database(database_url)
    engine = make_engine(settings)
    store = Store(engine)
    writer = AssignmentWriter(store, IdHasher("bench-erasure-key"))
    models = ModelHolder(SegmentModel.load(DEFAULT_MODELS_DIR))

    async def nothing(rows: list[PendingRow]) -> list[str | AppError | None]:
        return [None] * len(rows)

    noop: GroupCommitter[PendingRow, str | AppError | None] = GroupCommitter(nothing, 64, 0)
    service = AssignmentService(
        models, store, writer, noop, ShadowScorer(models), clock=SystemClock(), max_batch=10_000
    )
    body = {
        "customer_id": "c0",
        "features": {"recency_days": 3.0, "frequency": 7, "monetary": 4310.0},
    }
    figures: dict[str, float] = {}
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial, at timestamptz)"))
        conn.commit()
    raw = engine.raw_connection()
    cursor = raw.cursor()
    raw.autocommit = True  # type: ignore[attr-defined]
    figures["round trip (SELECT 1)"] = median_ms(lambda: cursor.execute("SELECT 1"))
    figures["commit floor (one-row autocommit INSERT)"] = median_ms(
        lambda: cursor.execute("INSERT INTO bench_floor (at) VALUES (now())")
    )
    raw.close()
    model = models.model
    figures["scoring (validate and score one body)"] = median_ms(
        lambda: service._score_single(model, body)
    )
    counter = iter(range(10**9))

    def one_row() -> AssignmentBatch:
        batch = service._score_single(model, body | {"customer_id": f"c{next(counter)}"})
        return AssignmentBatch.of_rows([batch.row(0)])

    # the service's way (239df98 on): the group committer awaits the write on the event loop's
    # own connection; the locks, then the merge with its history and events, committed by the
    # pipeline's end: one round trip
    loop = LoopConnection(engine, settings)
    on_loop = AssignmentWriter(store, IdHasher("bench-erasure-key"), loop)

    async def awaited(write: Callable[[list[PendingRow]], Awaitable[object]]) -> float:
        timings = []
        for index in range(REPEATS + 20):
            pending = [PendingRow(one_row().row(0))]
            started = time.perf_counter()
            await write(pending)
            if index >= 20:
                timings.append((time.perf_counter() - started) * 1000)
        return statistics.median(timings)

    async def ways() -> None:
        noop.start()
        figures["group committer (a write doing nothing)"] = await awaited(
            lambda pending: noop.submit(pending[0])
        )
        await noop.close()
        figures["a thread's hop (a write doing nothing, in a thread)"] = await awaited(
            in_thread(lambda pending: [None] * len(pending))
        )
        figures[WRITE] = await awaited(on_loop.write_rows)
        figures["write in a thread on a pooled connection (before 239df98)"] = await awaited(
            in_thread(writer.write_rows_blocking)
        )
        await loop.close()

    asyncio.run(ways())
    engine.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_database_option(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, bench_database(args.database) as url:
        figures = parts(url)
        bodies = write_bodies(Path(folder), real_customers())
        with server("ours", url) as (base, _):
            for name, path in (
                ("HTTP: persisted single, c=1, p50", "/v1/assignments"),
                ("HTTP: scored only, c=1, p50", "/v1/assignments?persist=false"),
            ):
                wrk(base + path, 1, 2, bodies["single"], True)  # warm-up
                runs = [wrk(base + path, 1, 5, bodies["single"], True) for _ in range(3)]
                assert not any(r.errors for r in runs), runs
                figures[name] = statistics.median(r.p50_ms for r in runs)
    for name, value in figures.items():
        print(f"{name:<50} {value:8.3f} ms")
    write = figures[WRITE]
    parts_sum = (
        figures["scoring (validate and score one body)"]
        + figures["group committer (a write doing nothing)"]
        + write
    )
    lines = [
        "## Where one persisted assignment's time goes (bench/breakdown.py)",
        "",
        f"`python bench/breakdown.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"medians of {REPEATS} repeats of each part on a fresh database, without HTTP; the "
        "whole over HTTP with wrk at one connection (median p50 of 3 runs of 5 s).",
        "",
        "| part | ms |",
        "| --- | ---: |",
        *(f"| {name} | {value:.3f} |" for name, value in figures.items()),
        f"| the parts (scoring + group committer + write on the loop) | {parts_sum:.3f} |",
        f"| left for HTTP, the framework and the event loop (persisted p50 − parts) | "
        f"{figures['HTTP: persisted single, c=1, p50'] - parts_sum:.3f} |",
        "",
        f"The write is {write / figures['commit floor (one-row autocommit INSERT)']:.1f}x the "
        f"commit floor; the persisted request {figures['HTTP: persisted single, c=1, p50'] / figures['commit floor (one-row autocommit INSERT)']:.1f}x.",
    ]
    write_section(args.out, "breakdown", "\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
