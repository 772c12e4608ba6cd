"""Instructions the service spends per request, counted by valgrind's callgrind: a figure these
noisy two-core machines cannot move (the same count whatever else runs), for request-path
changes of a few percent that wrk's requests/s cannot tell from noise.

`python bench/instructions.py --before REV` runs, for this tree and REV's, the app's ASGI callable
in-process (bench/asgi_loop.py: the real app, lifespan, PostgreSQL and model; no socket and no
uvicorn) under callgrind, instrumentation switched on after the warm-up. Each scenario is run
for two request counts; the difference over the difference of requests is the cost of one
request, start-up and warm-up cancelled out. Persisted requests count the service's threads
(the group committer's included), not PostgreSQL's. Writes the section `instructions` of
bench/RESULTS.md. Needs valgrind (Debian's package); takes about a minute a run.

Not exact either: the same code's scored request counted 912,800 to 945,004 in three runs on
2026-12-07 (before the hash seed was fixed), its persisted request 2,293,079 and 2,297,916. A
difference under about 4% on the scored path is not a finding.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    BIN,
    add_database_option,
    bench_database,
    worktree,
    write_section,
)

# (name, path and query): one new customer a request
SCENARIOS = (
    ("single scored", "/v1/assignments?persist=false"),
    ("single persisted", "/v1/assignments"),
)
SHORT, LONG = 100, 400  # requests counted in the two runs of a scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", required=True)
    add_database_option(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    started = time.monotonic()
    counts: dict[tuple[str, str], float] = {}
    with ExitStack() as context:
        folder = Path(context.enter_context(tempfile.TemporaryDirectory()))
        trees = {args.before: context.enter_context(worktree(args.before, folder)), "now": ROOT}
        for name, path in SCENARIOS:
            for label, tree in trees.items():
                with bench_database(args.database, tree) as url:
                    short = _instructions(tree, url, path, SHORT, folder)
                    long = _instructions(tree, url, path, LONG, folder)
                counts[name, label] = (long - short) / (LONG - SHORT)
                print(f"{name} [{label}]: {counts[name, label]:,.0f} per request", flush=True)
    write_section(
        args.out, f"instructions_{args.before}", _report(args, counts, time.monotonic() - started)
    )


def _instructions(tree: Path, database_url: str, path: str, requests: int, folder: Path) -> int:
    """Instructions callgrind counted while the app answered `requests` requests."""
    signals = Path(tempfile.mkdtemp(dir=folder))  # a folder of its own for each run
    out = signals / "callgrind.out"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SEGMENTS_LOG_LEVEL": "warning",
        "SEGMENTS_ALLOW_ANONYMOUS": "true",
        "SEGMENTS_ERASURE_KEY": "bench-erasure-key",
        # the same string hashes in every run: dicts and sets iterate alike
        "PYTHONHASHSEED": "0",
    }
    loop = [str(BIN / "python"), str(ROOT / "bench" / "asgi_loop.py")]
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        *loop,
        path,
        str(requests),
        str(signals),
    ]
    # from the tree, so `app` is that tree's package
    process = subprocess.Popen(
        command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_for(signals / "warm", process)
        _control("on", process.pid)
        time.sleep(1)  # valgrind applies the command at its next poll
        (signals / "go").touch()
        _wait_for(signals / "done", process)
        _control("off", process.pid)
        time.sleep(1)
        (signals / "stop").touch()
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    if process.returncode != 0:
        raise RuntimeError(f"the loop failed in {tree}:\n{stderr.decode()[-2000:]}")
    # the header's `summary:` stays 0 when instrumentation starts off: the count is `totals:`
    found = re.search(r"^totals: (\d+)", out.read_text(errors="replace"), re.M)
    if found is None:
        raise RuntimeError(f"no instruction count in {out}")
    return int(found.group(1))


def _wait_for(flag: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 600
    while not flag.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the loop ended or stalled before {flag.name}")
        time.sleep(0.2)


def _control(switch: str, pid: int) -> None:
    subprocess.run(["callgrind_control", "-i", switch, str(pid)], check=True, capture_output=True)


def _report(args: argparse.Namespace, counts: dict[tuple[str, str], float], elapsed: float) -> str:
    lines = [
        f"## Instructions per request: this tree against {args.before} (callgrind)",
        "",
        f"`python bench/instructions.py --before {args.before}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {elapsed / 60:.0f} min: "
        "the app's ASGI callable "
        "in-process (no socket, no uvicorn) under valgrind's callgrind, one new customer a "
        f"request; ({LONG} requests' count - {SHORT} requests' count) / {LONG - SHORT}. "
        "Instructions of the service's process (its threads), not PostgreSQL's; the same "
        "count on a loaded or an idle machine.",
        "",
        f"| scenario | {args.before} | now | now / before |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, _ in SCENARIOS:
        before, now = counts[name, args.before], counts[name, "now"]
        lines.append(f"| {name} | {before:,.0f} | {now:,.0f} | {now / before:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
