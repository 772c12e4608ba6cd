"""A worker's memory under the worst bodies we could think of (issue 13): each sent three times
to one `segments serve` worker on a fresh database; its RSS and peak RSS (VmHWM) after each kind,
and the size of each answer.

`python bench/worst_bodies.py` writes the section `worst-bodies` of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx2
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import add_database_option, bench_database, rss_mb, server, write_section  # noqa: E402

CHAMPION = {"recency_days": 3, "frequency": 7, "monetary": 4310.0}


def bodies() -> dict[str, tuple[str, bytes]]:
    """(route, body) of each worst case; all under the 16 MB body limit."""
    extra = {f"u{j:02d}": j for j in range(100)}
    return {
        "10,000 rows each with 100 unknown features": (
            "/v1/assignments/batch",
            orjson.dumps(
                {
                    "customers": [
                        {"customer_id": f"c{i}", "features": CHAMPION | extra}
                        for i in range(10_000)
                    ]
                }
            ),
        ),
        "one customer with 900,000 unknown features": (
            "/v1/assignments",
            orjson.dumps(
                {"customer_id": "c1", "features": CHAMPION | {f"f{i}": 1 for i in range(900_000)}}
            ),
        ),
        "a 15 MB feature name": (
            "/v1/assignments",
            orjson.dumps({"customer_id": "c1", "features": CHAMPION | {"x" * 15_000_000: 1}}),
        ),
        "10,000 invalid events (bad times, amounts, ids)": (
            "/v1/events",
            orjson.dumps(
                {
                    "events": [
                        {
                            "event_id": "",
                            "customer_id": "\u0085",
                            "occurred_at": "soon",
                            "amount": "lots",
                            "type": "gift",
                            "junk": "x" * 500,
                        }
                        for _ in range(10_000)
                    ]
                }
            ),
        ),
        "a 15 MB array of numbers where customers go": (
            "/v1/assignments/batch",
            orjson.dumps({"customers": list(range(2_000_000))}),
        ),
        "JSON nested 100,000 deep": ("/v1/assignments", b"[" * 100_000 + b"]" * 100_000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_database_option(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    rows = []
    with (
        bench_database(args.database) as url,
        server("ours", url) as (base, pid),
        httpx2.Client(base_url=base, timeout=120) as client,
    ):
        client.post("/v1/assignments", json={"customer_id": "warm", "features": CHAMPION})
        start, start_peak = rss_mb(pid)
        for name, (route, body) in bodies().items():
            statuses = set()
            sizes = set()
            for _ in range(3):
                answer = client.post(
                    route, content=body, headers={"content-type": "application/json"}
                )
                statuses.add(answer.status_code)
                sizes.add(len(answer.content))
            now, peak = rss_mb(pid)
            rows.append(
                f"| {name} | {len(body) / 1e6:.1f} MB | {', '.join(map(str, sorted(statuses)))} | "
                f"{max(sizes):,} B | {now:.0f} | {peak:.0f} |"
            )
            print(rows[-1], flush=True)
    lines = [
        "## A worker's memory under the worst bodies (bench/worst_bodies.py)",
        "",
        f"`python bench/worst_bodies.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"one worker, each body sent 3 times in this order. RSS before the first: {start:.0f} MB "
        f"(peak {start_peak:.0f} MB). The Kubernetes limit is 1 GiB per pod (2 workers).",
        "",
        "| body | size | status | largest answer | RSS after, MB | peak RSS so far, MB |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
        *rows,
    ]
    write_section(args.out, "worst-bodies", "\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
