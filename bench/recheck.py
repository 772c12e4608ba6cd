"""Measure again, longer, the scenarios `make bench BEFORE=REV` found slower than before.

On these two noisy cores one run of `bench/run.py` moves single figures by ±20% between its own
repeats; a ratio below 0.95 there is a question, not an answer. This runs just the named
scenarios of ours, this tree against REV, each on its own fresh database, alternating run by
run for more repeats, and writes the "recheck" section of bench/RESULTS.md.

Usage: python bench/recheck.py --before 9f324d9 --repeats 7 "single scored c=16" \
    "single scored c=64 [2 workers]"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    OURS,
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

TWO_WORKERS = " [2 workers]"
# run.py's audience scenario: each database holds the batch of 10,000 first (make bench's come
# from its scenarios), then the biggest segment's first page of 1,000 at c=16
AUDIENCE = ("audience page of 1000 c=16", "", 16, None, 1000, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "scenarios", nargs="+", help=f"names from bench/run.py's OURS, or {AUDIENCE[0]!r}"
    )
    parser.add_argument("--before", required=True)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    add_database_option(parser)
    args = parser.parse_args()
    known = {scenario[0]: scenario for scenario in [*OURS, AUDIENCE]}
    unknown = [s for s in args.scenarios if s.removesuffix(TWO_WORKERS) not in known]
    if unknown:
        sys.exit(f"unknown scenarios {unknown}; known: {sorted(known)}")
    started = time.monotonic()
    runs: dict[tuple[str, str], list[Run]] = {}
    with ExitStack() as context:
        folder = Path(context.enter_context(tempfile.TemporaryDirectory()))
        trees = {"before": context.enter_context(worktree(args.before, folder)), "now": ROOT}
        bodies = write_bodies(folder, real_customers())
        for scenario in args.scenarios:
            kind = "ours, 2 workers" if scenario.endswith(TWO_WORKERS) else "ours"
            _, path, connections, body, _, vary = known[scenario.removesuffix(TWO_WORKERS)]
            with ExitStack() as running:
                bases = {
                    label: running.enter_context(
                        server(
                            kind,
                            running.enter_context(bench_database(args.database, tree)),
                            tree=tree,
                        )
                    )[0]
                    for label, tree in trees.items()
                }
                body_file = bodies[body] if body is not None else None
                if scenario == AUDIENCE[0]:
                    path = _seeded_audience(bases.values(), bodies["batch10000"])
                for base in bases.values():
                    wrk(base + path, connections, 2, body_file, vary)  # warm-up
                for _ in range(args.repeats):
                    for label, base in bases.items():
                        run = wrk(base + path, connections, args.duration, body_file, vary)
                        runs.setdefault((scenario, label), []).append(run)
            print(f"{scenario}: done", flush=True)
    report(args, runs, time.monotonic() - started)


def _seeded_audience(bases: Iterable[str], batch: Path) -> str:
    """Store the batch through each server; the path of the biggest segment's first page."""
    for base in bases:
        stored = httpx2.post(
            f"{base}/v1/assignments/batch",
            content=batch.read_bytes(),
            headers={"content-type": "application/json"},
            timeout=120,
        )
        stored.raise_for_status()
    segments = httpx2.get(f"{base}/v1/segments").json()["segments"]
    biggest = max(segments, key=lambda segment: segment["share"])["key"]
    return f"/v1/segments/{biggest}/members?limit=1000"


def report(
    args: argparse.Namespace, runs: dict[tuple[str, str], list[Run]], elapsed: float
) -> None:
    def median(scenario: str, label: str) -> float:
        return float(statistics.median(r.requests_per_second for r in runs[scenario, label]))

    lines = [
        "## Rechecked against " + args.before + " (bench/recheck.py)",
        "",
        f"`python bench/recheck.py --before {args.before} --repeats {args.repeats} "
        + " ".join(f'"{s}"' for s in args.scenarios)
        + f"`, {elapsed / 60:.0f} min on the machine above: the scenarios a full run put below "
        "0.95, measured again with more repeats, the two trees alternating run by run.",
        "",
        "| scenario | req/s before (runs) | req/s now (runs) | now/before | errors |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for scenario in args.scenarios:
        before, now = runs[scenario, "before"], runs[scenario, "now"]
        lines.append(
            f"| {scenario} | {median(scenario, 'before'):,.0f} "
            f"({', '.join(f'{r.requests_per_second:,.0f}' for r in before)}) "
            f"| {median(scenario, 'now'):,.0f} "
            f"({', '.join(f'{r.requests_per_second:,.0f}' for r in now)}) "
            f"| {median(scenario, 'now') / median(scenario, 'before'):.2f} "
            f"| {sum(r.errors for r in before + now)} |"
        )
    text = "\n".join(lines)
    print(text)
    write_section(ROOT / "bench" / "RESULTS.md", f"recheck_{args.before}", text)


if __name__ == "__main__":
    main()
