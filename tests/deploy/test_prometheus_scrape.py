"""A real Prometheus (Debian's `prometheus` package) scrapes `segments serve --workers 2`.

The service and Prometheus run as real processes on loopback; the test sends assignments over
TCP and reads back, through Prometheus's HTTP API (`/api/v1/query`), what an operator's
dashboards and alerts would see: the assignment counts summed over both workers, the latency
histogram, the drift gauges, the model info and `up`. `promtool check metrics` lints the raw
exposition. `deploy/prometheus/rules.yml` is loaded when it exists, and none of its rules may
fail to evaluate.

A missing `prometheus` or `promtool` fails the test when CI is "true" and skips it otherwise
(`.ci/run` installs Debian's `prometheus` package, which has both).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.conftest import clear_tables, count_rows
from tests.servers import Service, free_port, segments_server, stop, tail, wait_until_ready
from tests.test_server import CHAMPION

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
JOB = "segment-scoring"  # the job name rules.yml expects (segment-scoring*)
MODEL_VERSION = "test-rfm-k4"  # tests/conftest.py: rfm_model_dir

ARRIVAL_SECONDS = 60.0  # how long Prometheus may take to show what was sent

SINGLES_BEFORE = 30  # sent, then seen by Prometheus, before the rest: rate() needs an increase
SINGLES_AFTER = 30
BATCH = 40
SINGLES = SINGLES_BEFORE + SINGLES_AFTER
TOTAL = SINGLES + BATCH


@dataclass(frozen=True)
class Tools:
    prometheus: str
    promtool: str


@dataclass(frozen=True)
class Prometheus:
    base: str
    log: Path


def _tool(name: str) -> str | None:
    """Debian's binary in /usr/bin first, then whatever PATH has."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="session")
def prometheus_tools() -> Tools:
    prometheus, promtool = _tool("prometheus"), _tool("promtool")
    if prometheus is None or promtool is None:
        missing = " and ".join(
            n for n, p in (("prometheus", prometheus), ("promtool", promtool)) if p is None
        )
        message = f"{missing} not found (install Debian's `prometheus` package, as .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
        pytest.skip(message)
    return Tools(prometheus=prometheus, promtool=promtool)


@pytest.fixture
def service(
    prometheus_tools: Tools, database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> Iterator[Service]:
    """`segments serve --workers 2` over an empty store (tests/servers.py).

    Depends on prometheus_tools so that nothing starts when the tools are missing."""
    clear_tables(database_url)
    with segments_server(
        database_url, rfm_model_dir, tmp_path, SEGMENTS_DRIFT_MIN_SAMPLES="10"
    ) as running:
        yield running


def prometheus_config(target_port: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }
        ],
    }
    if RULES.exists():
        config["rule_files"] = [str(RULES)]
    return config


@pytest.fixture
def prometheus(prometheus_tools: Tools, service: Service, tmp_path: Path) -> Iterator[Prometheus]:
    """A Prometheus server on a free loopback port scraping `service` every second."""
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(service.port), sort_keys=False))
    # promtool names a bad config or rule file more clearly than a server that will not start
    checked = subprocess.run(
        [prometheus_tools.promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, (
        f"promtool check config failed ({checked.returncode}) on\n{config.read_text()}\n"
        f"{checked.stdout}{checked.stderr}"
    )
    port = free_port()
    command = [
        prometheus_tools.prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    log = tmp_path / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{base}/-/ready", process, log, "prometheus")
        yield Prometheus(base=base, log=log)
    finally:
        stop(process)


def query(prometheus: Prometheus, expr: str) -> list[dict[str, Any]]:
    """An instant query's vector: [{"metric": {labels}, "value": [time, "value"]}, ...]."""
    response = httpx2.get(f"{prometheus.base}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, f"{expr}: HTTP {response.status_code} {response.text}"
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body}"
    assert body["data"]["resultType"] == "vector", f"{expr}: {body['data']}"
    return list(body["data"]["result"])


def sample(series: dict[str, Any]) -> float:
    return float(series["value"][1])  # "NaN" and "+Inf" parse too


# A check looks at Prometheus and answers (passed, what it saw).
Check = Callable[[Prometheus], tuple[bool, str]]


def single_value(expr: str, accept: Callable[[float], bool], **labels: str) -> Check:
    """Exactly one series, carrying `labels`, whose value `accept`s."""

    def check(prometheus: Prometheus) -> tuple[bool, str]:
        result = query(prometheus, expr)
        if len(result) != 1:
            return False, f"{len(result)} series: {result}"
        metric, value = result[0]["metric"], sample(result[0])
        wrong = {k: metric.get(k) for k, v in labels.items() if metric.get(k) != v}
        return accept(value) and not wrong, f"{value} {metric}" + (
            f" wrong labels {wrong}" if wrong else ""
        )

    return check


def wait_for(
    prometheus: Prometheus, checks: dict[str, Check], seconds: float
) -> dict[str, tuple[bool, str]]:
    """Polls every check until all pass or `seconds` go by; the last observation of each."""
    deadline = time.monotonic() + seconds
    while True:
        seen = {name: check(prometheus) for name, check in checks.items()}
        if all(ok for ok, _ in seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def describe_failures(
    seen: dict[str, tuple[bool, str]], prometheus: Prometheus, service: Service
) -> str:
    failed = [f"  {name}: last saw {observed}" for name, (ok, observed) in seen.items() if not ok]
    targets = httpx2.get(f"{prometheus.base}/api/v1/targets", timeout=10).json()
    scrapes = [
        f"  {t['scrapeUrl']}: health={t['health']} lastError={t['lastError']!r}"
        for t in targets["data"]["activeTargets"]
    ]
    return (
        "Prometheus did not show, within the time allowed:\n"
        + "\n".join(failed)
        + "\ntargets:\n"
        + "\n".join(scrapes)
        + f"\nprometheus log:\n{tail(prometheus.log)}\nservice log:\n{tail(service.log)}"
    )


def send_singles(service: Service, start: int, count: int) -> None:
    for i in range(start, start + count):
        # a fresh connection each time, so the kernel spreads requests over both workers
        response = httpx2.post(
            f"{service.base}/v1/assignments",
            json={"customer_id": f"p{i}", "features": CHAMPION},
            headers={"connection": "close"},
            timeout=10,
        )
        assert response.status_code == 200, response.text


def finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_prometheus_scrapes_both_workers_and_sees_counts_latency_and_drift(
    prometheus_tools: Tools, service: Service, prometheus: Prometheus, database_url: str
) -> None:
    problems: list[str] = []
    up = single_value(f'up{{job="{JOB}"}}', lambda v: v == 1, job=JOB)

    # 1. Prometheus scrapes the service before any traffic, so every counter has a baseline
    seen = wait_for(prometheus, {"up == 1": up}, ARRIVAL_SECONDS)
    assert seen["up == 1"][0], describe_failures(seen, prometheus, service)

    # 2. traffic in two steps with a scrape between them, so rate() over the window sees an increase
    send_singles(service, 0, SINGLES_BEFORE)
    first = single_value("sum(segment_assignments_total)", lambda v: v == SINGLES_BEFORE)
    seen = wait_for(prometheus, {"first assignments scraped": first}, ARRIVAL_SECONDS)
    assert seen["first assignments scraped"][0], describe_failures(seen, prometheus, service)
    send_singles(service, SINGLES_BEFORE, SINGLES_AFTER)
    batch = [{"customer_id": f"b{i}", "features": CHAMPION} for i in range(BATCH)]
    response = httpx2.post(
        f"{service.base}/v1/assignments/batch", json={"customers": batch}, timeout=30
    )
    assert response.status_code == 200, response.text
    stored = count_rows(database_url, "assignments")
    assert stored == TOTAL

    workers = {p.name.rsplit("_", 1)[-1] for p in service.metrics_dir.glob("counter_*.db")}
    if len(workers) < 2:
        problems.append(f"one worker took all the requests: {sorted(workers)}")

    # 3. the raw exposition passes promtool's linter (HELP, TYPE, naming conventions)
    exposition = httpx2.get(
        f"{service.base}/metrics", headers={"connection": "close"}, timeout=10
    ).text
    lint = subprocess.run(
        [prometheus_tools.promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if lint.returncode != 0:
        problems.append(
            f"promtool check metrics exited {lint.returncode}:\n{lint.stdout}{lint.stderr}"
        )

    # 4. what dashboards and alerts would see, summed over both workers
    p99 = "histogram_quantile(0.99, sum by (le) (rate(segment_request_duration_seconds_bucket{}[1m])))"
    checks: dict[str, Check] = {
        "up == 1": up,
        f"sum(segment_assignments_total) == {TOTAL}": single_value(
            "sum(segment_assignments_total)", lambda v: v == TOTAL
        ),
        f"assignments by segment sum to {TOTAL} for {MODEL_VERSION}": single_value(
            "sum by (model_version) (segment_assignments_total)",
            lambda v: v == TOTAL,
            model_version=MODEL_VERSION,
        ),
        f"/v1/assignments request count == {SINGLES}": single_value(
            'sum(segment_request_duration_seconds_count{route="/v1/assignments"})',
            lambda v: v == SINGLES,
        ),
        "p99 latency, all routes, finite and > 0": single_value(p99.format(""), finite_positive),
        "p99 latency of /v1/assignments finite and > 0": single_value(
            p99.format('{route="/v1/assignments"}'), finite_positive
        ),
        "segment_drift_psi present, finite, >= 0": single_value(
            "segment_drift_psi",
            lambda v: math.isfinite(v) and v >= 0,
            model_version=MODEL_VERSION,
        ),
        f"segment_drift_samples == {stored}": single_value(
            "segment_drift_samples", lambda v: v == stored, model_version=MODEL_VERSION
        ),
        f"segment_model_info{{version={MODEL_VERSION!r}}} == 1": single_value(
            "segment_model_info", lambda v: v == 1, version=MODEL_VERSION
        ),
    }
    seen = wait_for(prometheus, checks, ARRIVAL_SECONDS)
    if not all(ok for ok, _ in seen.values()):
        problems.append(describe_failures(seen, prometheus, service))

    # 5. the team's rules, when present, load and evaluate without errors against real series
    if RULES.exists():
        rules = httpx2.get(f"{prometheus.base}/api/v1/rules", timeout=10).json()
        groups = rules["data"]["groups"]
        if not groups:
            problems.append(f"{RULES} is in rule_files but Prometheus loaded no rule group")
        broken = [
            f"  {group['name']} / {rule['name']}: {rule.get('lastError')}"
            for group in groups
            for rule in group["rules"]
            if rule.get("health") == "err"
        ]
        if broken:
            problems.append("rules failing to evaluate:\n" + "\n".join(broken))

    assert not problems, "\n\n".join(problems)
