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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
from alembic import command

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.store.migrate import alembic_config  # noqa: E402
from bench.run import (  # noqa: E402
    BIN,
    SERVER_CPU,
    Run,
    bench_database,
    free_port,
    real_customers,
    write_bodies,
    write_section,
    wrk,
)

SCENARIOS = [  # (name, body, path, connections, rows per request)
    ("single persisted c=16", "single", "/v1/assignments", 16, 1),
    ("single persisted c=64", "single", "/v1/assignments", 64, 1),
    ("batch 1000 persisted c=4", "batch1000", "/v1/assignments/batch", 4, 1000),
]


@contextmanager
def serve(tree: Path, database_url: str) -> Iterator[str]:
    """`segments serve` of the code in `tree` (its own app package and models) on CPU 0."""
    port = free_port()
    command = [
        "taskset", "-c", SERVER_CPU, str(BIN / "python"), "-c",
        "from app.cli import main; main()", "serve", "--port", str(port),
    ]  # fmt: skip
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SEGMENTS_LOG_LEVEL": "warning",
        "SEGMENTS_ALLOW_ANONYMOUS": "true",
        "SEGMENTS_ERASURE_KEY": "bench-erasure-key",
    }
    process = subprocess.Popen(command, cwd=tree, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _up(base):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"the server of {tree} did not start")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def _up(base: str) -> bool:
    try:
        httpx2.get(f"{base}/healthz", timeout=1)
    except httpx2.TransportError:
        return False
    return True


def migrate_back(tree: Path, database_url: str) -> None:
    """Take a database migrated by this tree down to the schema the other tree expects."""
    code = "from app.store.migrate import head_revision; print(head_revision())"  # the old head
    old_head = subprocess.run(
        [str(BIN / "python"), "-c", code], cwd=tree, check=True, capture_output=True, text=True
    ).stdout.strip()
    command.downgrade(alembic_config(database_url), old_head)


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
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        before = folder / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        try:
            bodies = write_bodies(folder, real_customers())
            bodies["single+audience"] = with_audience_fields(
                bodies["single"], folder / "single-audience.json"
            )
            bodies["batch1000+audience"] = with_audience_fields(
                bodies["batch1000"], folder / "batch1000-audience.json"
            )
            with bench_database(args.admin_url) as old_db, bench_database(args.admin_url) as new_db:
                migrate_back(before, old_db)
                with serve(before, old_db) as old, serve(ROOT, new_db) as new:
                    for repeat in range(args.repeats):
                        for name, body, path, connections, _ in SCENARIOS:
                            for label, base in (("before", old), ("now", new)):
                                run = wrk(
                                    base + path, connections, args.duration, bodies[body], True
                                )
                                runs.setdefault(f"{name} [{label}]", []).append(run)
                            audience_body = bodies[f"{body}+audience"]
                            run = wrk(base + path, connections, args.duration, audience_body, True)
                            runs.setdefault(f"{name} [now, consent+email]", []).append(run)
                        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
                    # 10,000 tombstones standing: every write checks against them
                    ids = [f"erased-{i}" for i in range(10_000)]
                    httpx2.post(f"{new}/v1/erasures", json={"customer_ids": ids}, timeout=60)
                    for _ in range(args.repeats):
                        for name, body, path, connections, _ in SCENARIOS:
                            run = wrk(new + path, connections, args.duration, bodies[body], True)
                            runs.setdefault(f"{name} [now, 10k tombstones]", []).append(run)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False
            )
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
