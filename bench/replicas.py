"""Two replicas on one PostgreSQL: does the fleet's persisted write rate grow with replicas?

Until issue 14 every membership merge of the fleet took one advisory lock held to its commit, so
a second replica could add no write throughput. This measures persisted single assignments at
c=64 against one replica (`segments serve`, one worker, on CPU 0) and against two (one on CPU 0,
one on CPU 1, the 64 connections split between them as a load balancer would), for this tree
and, with --before, an earlier commit, alternating run by run on fresh databases. PostgreSQL and
wrk are not pinned: this machine has two cores, so the replicas share them with the database and
the load generator, and the figure says what two replicas gain here, not on separate machines.
Writes the "replicas" section of bench/RESULTS.md.

    python bench/replicas.py --before 5346bfc
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    ROOT,
    Run,
    add_database_option,
    bench_database,
    real_customers,
    server,
    worktree,
    write_bodies,
    write_section,
    wrk,
)

CONNECTIONS = 64
PATH = "/v1/assignments"
# the database's sessions as pg_stat_activity shows them: running, and waiting for an advisory
# lock (the fleet's one lock before issue 14, the customers' bucket locks after)
_SESSIONS = text(
    """
    SELECT count(*) FILTER (WHERE state = 'active'),
           count(*) FILTER (WHERE wait_event_type = 'Lock' AND wait_event = 'advisory')
    FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
    """
)


@dataclass
class LockWaits:
    samples: int = 0
    active: int = 0
    waiting: int = 0
    cpu_busy: float = 0.0  # the machine's CPU time spent busy during the block, 0-1

    @property
    def share(self) -> float:
        """Of the sessions running a statement, the share waiting for an advisory lock."""
        return self.waiting / self.active if self.active else 0.0


@contextmanager
def sampled_lock_waits(database_url: str, every: float = 0.02) -> Iterator[LockWaits]:
    """Sample the database's sessions every `every` seconds while the block runs."""
    waits = LockWaits()
    stop = threading.Event()
    engine = create_engine(database_url)

    def sample() -> None:
        with engine.connect() as conn:
            while not stop.wait(every):
                active, waiting = conn.execute(_SESSIONS).one()
                conn.rollback()  # a fresh snapshot of pg_stat_activity next time
                waits.samples += 1
                waits.active += active
                waits.waiting += waiting

    sampler = threading.Thread(target=sample)
    sampler.start()
    busy, total = _cpu_times()
    try:
        yield waits
    finally:
        stop.set()
        sampler.join()
        engine.dispose()
        busy_after, total_after = _cpu_times()
        waits.cpu_busy = (busy_after - busy) / max(1, total_after - total)


def _cpu_times() -> tuple[int, int]:
    """(busy, all) CPU time of the machine so far, in clock ticks (/proc/stat's first line)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def fleet_run(bases: list[str], body: Path, duration: int) -> Run:
    """One wrk per replica at once, the connections split evenly; the fleet's requests/s."""
    share = CONNECTIONS // len(bases)
    with ThreadPoolExecutor(len(bases)) as pool:
        runs = list(
            pool.map(lambda base: wrk(base + PATH, share, duration, body, True, cpu=None), bases)
        )
    return Run(
        sum(r.requests_per_second for r in runs),
        max(r.p50_ms for r in runs),
        max(r.p99_ms for r in runs),
        sum(r.errors for r in runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", help="an earlier commit, measured in turn with this tree")
    add_database_option(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()

    results: dict[tuple[str, int], list[Run]] = {}
    waits: dict[tuple[str, int], list[LockWaits]] = {}
    with ExitStack() as context:
        folder = Path(context.enter_context(tempfile.TemporaryDirectory()))
        trees = {"this tree": ROOT}
        if args.before:
            trees[args.before] = context.enter_context(worktree(args.before, folder))
        body = write_bodies(folder, real_customers())["single"]
        fleets: dict[tuple[str, int], list[str]] = {}
        databases: dict[tuple[str, int], str] = {}
        for label, tree in trees.items():
            for replicas in (1, 2):
                database = context.enter_context(bench_database(args.database, tree))
                databases[(label, replicas)] = database
                fleets[(label, replicas)] = [
                    context.enter_context(server("ours", database, tree=tree, cpu=str(cpu)))[0]
                    for cpu in range(replicas)
                ]
        for bases in fleets.values():
            fleet_run(bases, body, 2)  # warm-up, not counted
        for _ in range(args.repeats):
            for key, bases in fleets.items():
                with sampled_lock_waits(databases[key]) as sampled:
                    run = fleet_run(bases, body, args.duration)
                results.setdefault(key, []).append(run)
                waits.setdefault(key, []).append(sampled)
                print(
                    f"{key[0]}, {key[1]} replica(s): {run.requests_per_second:,.0f} req/s "
                    f"p99 {run.p99_ms:.1f} ms, errors {run.errors}, "
                    f"{sampled.share:.0%} of running statements waiting for an advisory lock, "
                    f"CPU {sampled.cpu_busy:.0%} busy",
                    flush=True,
                )
    write_section(args.out, "replicas", report(args, trees, results, waits))


def report(
    args: argparse.Namespace,
    trees: dict[str, Path],
    results: dict[tuple[str, int], list[Run]],
    waits: dict[tuple[str, int], list[LockWaits]],
) -> str:
    def median(key: tuple[str, int]) -> float:
        return statistics.median(r.requests_per_second for r in results[key])

    lines = [
        "## Replicas: persisted single assignments at c=64, one replica against two",
        "",
        f"`python bench/replicas.py{f' --before {args.before}' if args.before else ''}` on "
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} cores: each "
        "replica `segments serve` with one worker, pinned to its own core (0, and 1 for the "
        "second); PostgreSQL and wrk unpinned (two cores for everything); a fresh database per "
        f"fleet; {args.repeats} runs of {args.duration} s each, fleets alternating; 64 "
        "connections, split evenly between the replicas; a new customer per request. *Lock "
        "waits*: pg_stat_activity sampled every 20 ms during the runs, the share of the "
        "statements running that were waiting for an advisory lock; *CPU busy*: the two "
        "cores' busy share during the runs (/proc/stat).",
        "",
        "| tree | replicas | requests/s (median, spread) | p99 ms (median) | lock waits "
        "| CPU busy | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (label, replicas), runs in results.items():
        rates = [r.requests_per_second for r in runs]
        sampled = waits[(label, replicas)]
        share = sum(w.waiting for w in sampled) / max(1, sum(w.active for w in sampled))
        lines.append(
            f"| {label} | {replicas} | {statistics.median(rates):,.0f} "
            f"({min(rates):,.0f}–{max(rates):,.0f}) | "
            f"{statistics.median(r.p99_ms for r in runs):.1f} | {share:.0%} | "
            f"{statistics.median(w.cpu_busy for w in sampled):.0%} | "
            f"{sum(r.errors for r in runs)} |"
        )
    lines.append("")
    for label in trees:
        lines.append(
            f"- {label}: two replicas **{median((label, 2)) / median((label, 1)):.2f}x** one "
            "replica's requests/s."
        )
    if args.before:
        lines.append(
            f"- two replicas, this tree against {args.before}: "
            f"**{median(('this tree', 2)) / median((args.before, 2)):.2f}x**."
        )
    busy = statistics.median(w.cpu_busy for w in waits[("this tree", 2)])
    lines.append(
        f"- with two replicas the machine's cores were {busy:.0%} busy: on two cores shared "
        "with PostgreSQL and wrk, what two replicas can add is bounded by CPU, whatever the "
        "locks; the lock waits column is what the change removed."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
