"""What shadow scoring costs the caller: the same server measured with and without a shadow.

Runs `segments serve` (1 worker, CPU 0) on the default model, registers a second model trained
on the same Online Retail customers (k=6, so it disagrees somewhat: a realistic candidate),
and alternates shadow off / on between wrk runs (CPU 1), so both see the same machine noise.
Writes the "shadow" section of bench/RESULTS.md. Usage: python bench/shadow.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    BIN,
    Run,
    add_database_option,
    bench_database,
    real_customers,
    server,
    write_bodies,
    write_section,
    wrk,
)

DATA = ROOT / "data" / "online-retail" / "online_retail.csv.gz"
SCENARIOS = [  # (name, path, connections)
    ("single scored c=1", "/v1/assignments?persist=false", 1),
    ("single scored c=16", "/v1/assignments?persist=false", 16),
    ("single persisted c=16", "/v1/assignments", 16),
]


def train_candidate(folder: Path) -> str:
    """A k=6 model on the same data: same features, a genuinely different partition."""
    command = [
        str(BIN / "segments"), "train", "transactions", str(DATA), "--customer", "CustomerID",
        "--time", "InvoiceDate", "--quantity", "Quantity", "--price", "UnitPrice",
        "--invoice", "InvoiceNo", "--segments", "6", "--version", "bench-shadow-k6",
        "--out", str(folder),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return str(folder / "bench-shadow-k6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    add_database_option(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    started = time.monotonic()
    runs: dict[tuple[str, str], list[Run]] = {}
    with tempfile.TemporaryDirectory() as tmp, bench_database(args.database) as url:
        folder = Path(tmp)
        candidate = train_candidate(folder / "models")
        bodies = write_bodies(folder, real_customers())
        env = {**os.environ, "DATABASE_URL": url}
        subprocess.run(
            [str(BIN / "segments"), "models", "register", candidate], env=env, check=True
        )
        with server("ours", url) as (base, _):
            for repeat in range(args.repeats):
                for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                    if mode == "on":
                        httpx2.post(f"{base}/v1/models/bench-shadow-k6/shadow").raise_for_status()
                    else:
                        httpx2.delete(f"{base}/v1/models/shadow").raise_for_status()
                    for name, path, connections in SCENARIOS:
                        if repeat == 0:
                            wrk(base + path, connections, 2, bodies["single"], True)  # warm-up
                        run = wrk(base + path, connections, args.duration, bodies["single"], True)
                        runs.setdefault((name, mode), []).append(run)
                        print(f"{name:<24} shadow {mode:<3} {run.requests_per_second:>8,.0f} req/s "
                              f"p50 {run.p50_ms:.3f} ms p99 {run.p99_ms:.3f} ms")  # fmt: skip
            metrics = httpx2.get(f"{base}/metrics").text
    shadowed = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("segment_shadow_assignments_total{")
    )
    dropped = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("segment_shadow_dropped_total")
    )

    def median(name: str, mode: str, attribute: str) -> float:
        return float(statistics.median(getattr(r, attribute) for r in runs[name, mode]))

    lines = [
        "## Shadow scoring (issue 4)",
        "",
        f"Written by `python bench/shadow.py --duration {args.duration} --repeats {args.repeats}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, in {(time.monotonic() - started) / 60:.0f} minutes,",
        "on the machine above. One `segments serve` worker on CPU 0 serving the default model; the shadow is a",
        "k=6 model trained on the same customers. Shadow off and on alternate between runs; medians of the runs.",
        f"{shadowed:,.0f} assignments were shadow-scored, {dropped:,.0f} dropped (queue full).",
        "",
        "| scenario | req/s off | req/s on | ratio | p50 ms off | p50 ms on | p99 ms off | p99 ms on | p99 added ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, _, _ in SCENARIOS:
        off_rps, on_rps = (
            median(name, "off", "requests_per_second"),
            median(name, "on", "requests_per_second"),
        )
        lines.append(
            f"| {name} | {off_rps:,.0f} | {on_rps:,.0f} | {on_rps / off_rps:.2f} | "
            f"{median(name, 'off', 'p50_ms'):.3f} | {median(name, 'on', 'p50_ms'):.3f} | "
            f"{median(name, 'off', 'p99_ms'):.2f} | {median(name, 'on', 'p99_ms'):.2f} | "
            f"{median(name, 'on', 'p99_ms') - median(name, 'off', 'p99_ms'):+.2f} |"
        )
    write_section(args.out, "shadow", "\n".join(lines))
    print(f"wrote the shadow section of {args.out}")


if __name__ == "__main__":
    main()
