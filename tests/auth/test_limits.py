"""Authentication failures logged and counted, and the rate limits: per key, per address, and
per address on failed authentications (the wrong-key flood of issue 13), over the real app;
probes and /metrics never limited."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from app.auth.keys import Scope, generate_key, key_config_line
from app.main import create_app
from app.ratelimit import TokenBuckets, retry_after
from tests.conftest import clear_tables, make_settings, metric_value

CHAMPION = {"recency_days": 2, "frequency": 25, "monetary": 9000.0}
READER = generate_key()
WRITER = generate_key()
PROBES = ("/healthz", "/readyz", "/metrics")


@contextmanager
def keyed_app(database_url: str, model_dir: Path, **overrides: object) -> Iterator[TestClient]:
    clear_tables(database_url)
    entries = "\n".join(
        [
            key_config_line("reader", READER, [Scope.READ]),
            key_config_line("writer", WRITER, [Scope.ASSIGN]),
        ]
    )
    settings = make_settings(
        database_url, model_dir, api_keys=entries, allow_anonymous=False, **overrides
    )
    with TestClient(create_app(settings)) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def counted(client: TestClient, name: str, **labels: str) -> float:
    return metric_value(client.get("/metrics").text, name, **labels)


def assert_rate_limited(response: object, loc: str) -> None:
    status = getattr(response, "status_code", None)
    assert status == 429, getattr(response, "text", "")
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["retry-after"].isdigit()
    assert int(headers["retry-after"]) >= 1
    assert "x-request-id" in headers
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "rate_limited"
    assert error["details"][0]["loc"] == loc
    assert "retry after" in error["message"]


def test_authentication_failures_are_logged_and_counted_without_the_key(
    database_url: str, rfm_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.auth")
    wrong = generate_key()
    with keyed_app(database_url, rfm_model_dir) as client:
        before = {
            r: counted(client, "segment_auth_failures_total", reason=r)
            for r in ("missing", "unknown", "scope")
        }
        assert client.get("/v1/segments").status_code == 401
        assert client.get("/v1/segments", headers=bearer(wrong)).status_code == 401
        assert client.get("/v1/segments", headers=bearer(wrong)).status_code == 401
        scoped = client.post(
            "/v1/assignments",
            json={"customer_id": "c1", "features": CHAMPION},
            headers=bearer(READER),
        )
        assert scoped.status_code == 403
        after = {r: counted(client, "segment_auth_failures_total", reason=r) for r in before}
    assert {r: after[r] - before[r] for r in before} == {"missing": 1, "unknown": 2, "scope": 1}
    failures = [r for r in caplog.records if r.name == "app.auth.guard"]
    assert [(r.levelname, r.fields["reason"], r.fields["key"]) for r in failures] == [  # type: ignore[attr-defined]
        ("WARNING", "missing", None),
        ("WARNING", "unknown", None),
        ("WARNING", "unknown", None),
        ("WARNING", "scope", "reader"),
    ]
    assert all(r.fields["address"] == "testclient" for r in failures)  # type: ignore[attr-defined]
    for key in (wrong, READER):
        assert key not in caplog.text
        assert key[3:20] not in caplog.text


def test_a_wrong_key_flood_is_answered_429_by_default_and_probes_stay_open(
    database_url: str, rfm_model_dir: Path
) -> None:
    """Issue 13: 3,000 wrong-key requests were all answered. By default an address gets 20
    failed attempts at once and one a second after; past that it is refused before its key
    is even looked at, so a right key from it waits too (else 429 vs 401 would tell keys
    apart, and guessing would go at full speed)."""
    with keyed_app(database_url, rfm_model_dir) as client:
        limited_before = counted(client, "segment_rate_limited_total", limit="auth_failures")
        statuses = [
            client.get("/v1/segments", headers=bearer(generate_key())).status_code
            for _ in range(60)
        ]
        # 20 at once, plus one a second while they were sent
        assert 20 <= statuses.count(401) <= 25, statuses
        assert statuses.count(429) == 60 - statuses.count(401)
        assert statuses[-1] == 429
        assert_rate_limited(client.get("/v1/segments", headers=bearer(READER)), "address")
        for path in PROBES:
            for _ in range(5):
                assert client.get(path).status_code == 200, path
        limited = counted(client, "segment_rate_limited_total", limit="auth_failures")
    assert limited - limited_before == statuses.count(429) + 1


def test_each_key_has_its_own_rate(database_url: str, rfm_model_dir: Path) -> None:
    with keyed_app(
        database_url, rfm_model_dir, rate_limit_per_key=0.5, rate_limit_per_key_burst=2
    ) as client:
        before = counted(client, "segment_rate_limited_total", limit="key")
        assert client.get("/v1/segments", headers=bearer(READER)).status_code == 200
        assert client.get("/v1/models", headers=bearer(READER)).status_code == 200
        refused = client.get("/v1/segments", headers=bearer(READER))
        assert_rate_limited(refused, "authorization")
        assert refused.headers["retry-after"] == "2"  # one token back in 1 / 0.5 s
        assert "'reader'" in refused.json()["error"]["message"]
        # another key, from the same address, is not held back by the first one's rate
        body = {"customer_id": "k1", "features": CHAMPION}
        assert client.post("/v1/assignments", json=body, headers=bearer(WRITER)).status_code == 200
        for path in PROBES:
            assert client.get(path).status_code == 200
        assert counted(client, "segment_rate_limited_total", limit="key") - before == 1


def test_each_address_has_its_own_rate_but_probes_do_not_count(
    database_url: str, rfm_model_dir: Path
) -> None:
    clear_tables(database_url)
    settings = make_settings(
        database_url, rfm_model_dir, rate_limit_per_address=0.5, rate_limit_per_address_burst=3
    )
    with TestClient(create_app(settings)) as client:  # anonymous: only addresses to limit
        for path in PROBES:
            for _ in range(10):
                assert client.get(path).status_code == 200, path
        assert client.get("/v1/segments").status_code == 200
        assert client.get("/v1/models/active").status_code == 200
        body = {"customer_id": "a1", "features": CHAMPION}
        assert client.post("/v1/assignments", json=body).status_code == 200
        refused = client.post("/v1/assignments", json=body)
        assert_rate_limited(refused, "address")
        assert refused.headers["retry-after"] == "2"
        assert client.get("/nowhere").status_code == 429  # any path, matched or not
        for path in PROBES:
            assert client.get(path).status_code == 200, path
        assert counted(client, "segment_rate_limited_total", limit="address") >= 2


def test_token_buckets_refill_at_their_rate_and_forget_full_buckets() -> None:
    now = [100.0]
    buckets = TokenBuckets(rate=2, burst=3, now=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.wait("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # names are apart
    now[0] += 0.5
    assert buckets.wait("a") == 0.0
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    assert retry_after(0.01) == 1
    assert retry_after(1.2) == 2
    # a flood of distinct names: those whose bucket is full again are dropped, not kept forever
    for i in range(5000):
        buckets.take(f"address-{i}")
        now[0] += 0.01
    assert len(buckets) < 1000
