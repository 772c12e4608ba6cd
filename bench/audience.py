"""What the audience features cost the write path: this tree against the commit before them.

Issue 6 put the change feed (events under an advisory lock held to the commit), consent, hashed
identifiers and the erasure-tombstone check into every stored assignment. This runs the server
of both trees (1 worker on CPU 0, wrk on CPU 1, each on its own fresh PostgreSQL database),
alternating them between wrk runs so both see the same machine noise, and adds this tree's
figures for requests carrying consent and an e-mail, and with 10,000 tombstones standing.
Writes the "audience" section of bench/RESULTS.md.

Usage: python bench/audience.py [--before 1aee02b] [--duration 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    Run,
    bench_database,
    real_customers,
    server,
    worktree,
    write_bodies,
    write_section,
    wrk,
)

SCENARIOS = [  # (name, body, path, connections, rows per request)
    ("single persisted c=16", "single", "/v1/assignments", 16, 1),
    ("single persisted c=64", "single", "/v1/assignments", 64, 1),
    ("batch 1000 persisted c=4", "batch1000", "/v1/assignments/batch", 4, 1000),
]


def with_audience_fields(body: Path, out: Path) -> Path:
    """The same body, each customer also carrying an e-mail address and consent."""
    data = json.loads(body.read_text())
    extra = {"email": "Someone@Example.com", "consent": {"advertising": True}}
    if "customers" in data:
        data["customers"] = [c | extra for c in data["customers"]]
    else:
        data |= extra
    out.write_text(json.dumps(data))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", default="1aee02b", help="the commit to compare with")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    started = time.monotonic()
    runs: dict[str, list[Run]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        worktree(args.before, Path(tmp)) as before,
        bench_database(args.admin_url, before) as old_db,
        bench_database(args.admin_url) as new_db,
        server("ours", old_db, tree=before) as (old, _),
        server("ours", new_db) as (new, _),
    ):
        bodies = write_bodies(Path(tmp), real_customers())
        for body in ("single", "batch1000"):
            bodies[f"{body}+audience"] = with_audience_fields(
                bodies[body], Path(tmp) / f"{body}-audience.json"
            )
        for repeat in range(args.repeats):
            for name, body, path, connections, _ in SCENARIOS:
                for label, base in (("before", old), ("now", new)):
                    run = wrk(base + path, connections, args.duration, bodies[body], True)
                    runs.setdefault(f"{name} [{label}]", []).append(run)
                audience_body = bodies[f"{body}+audience"]
                run = wrk(new + path, connections, args.duration, audience_body, True)
                runs.setdefault(f"{name} [now, consent+email]", []).append(run)
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
        # 10,000 tombstones standing: every write checks against them
        ids = [f"erased-{i}" for i in range(10_000)]
        httpx2.post(f"{new}/v1/erasures", json={"customer_ids": ids}, timeout=60)
        for _ in range(args.repeats):
            for name, body, path, connections, _ in SCENARIOS:
                run = wrk(new + path, connections, args.duration, bodies[body], True)
                runs.setdefault(f"{name} [now, 10k tombstones]", []).append(run)
    report(args, runs, time.monotonic() - started)


def report(args: argparse.Namespace, runs: dict[str, list[Run]], elapsed: float) -> None:
    def median(key: str, attribute: str) -> float:
        return float(statistics.median(getattr(r, attribute) for r in runs[key]))

    lines = [
        "## Audience features on the write path (bench/audience.py)",
        "",
        f"`python bench/audience.py --before {args.before} --duration {args.duration} "
        f"--repeats {args.repeats}` on {platform.node()} ({os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}), {elapsed / 60:.0f} min. "
        f"`before` is commit {args.before} (no change feed, consent or tombstones), `now` this "
        "tree; one worker on CPU 0, wrk on CPU 1, each on its own fresh PostgreSQL database, "
        "alternated run by run. Medians of the repeats.",
        "",
        "| scenario | requests/s | p50 ms | p99 ms | errors | requests/s vs before |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, measured in runs.items():
        scenario = key.split(" [")[0]
        before = median(f"{scenario} [before]", "requests_per_second")
        lines.append(
            f"| {key} | {median(key, 'requests_per_second'):,.0f} | {median(key, 'p50_ms'):.2f} "
            f"| {median(key, 'p99_ms'):.2f} | {sum(r.errors for r in measured)} "
            f"| {median(key, 'requests_per_second') / before:.2f} |"
        )
    text = "\n".join(lines)
    print(text)
    write_section(ROOT / "bench" / "RESULTS.md", "audience", text)


if __name__ == "__main__":
    main()
