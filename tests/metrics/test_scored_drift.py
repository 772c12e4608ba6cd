"""Issue 13, item 12: drift counts every scored customer, stored or not. Real Online Retail
customers (the last month's, a population the default model's drift alert must catch) scored with
`?persist=false` leave per-bin counters in /metrics from which the recording rules' PSI is the
offline PSI of the same customers; and the counters stay exact with two worker processes."""

from __future__ import annotations

import math
from pathlib import Path

import httpx2
import pandas as pd
from starlette.testclient import TestClient

from app.main import create_app
from app.metrics.evaluation import population_drift
from app.scoring.model import SegmentModel
from tests.conftest import DEFAULT_MODELS, clear_tables, make_settings, metric_value
from tests.servers import segments_server

FLOOR = 1e-4  # the recording rules' stand-in for an empty bin's share


def shares(exposition: str, name: str, key: str, **labels: str) -> dict[str, float]:
    """{label `key`'s value: the sample's value} of the samples of `name` with `labels`."""
    found: dict[str, float] = {}
    for line in exposition.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, _, value = line.rpartition(" ")
        pairs = dict(
            part.split("=", 1) for part in series[len(name) + 1 : -1].split(",") if "=" in part
        )
        pairs = {k: v.strip('"') for k, v in pairs.items()}
        if all(pairs.get(k) == v for k, v in labels.items()):
            found[pairs[key]] = found.get(pairs[key], 0.0) + float(value)
    return found


def added(
    before: str, after: str, name: str, key: str, feature: str | None = None
) -> dict[str, float]:
    """How much each of the default model's series of counter `name` grew, by label `key`."""
    labels = {"model_version": SegmentModel.load(DEFAULT_MODELS).version}
    if feature is not None:
        labels["feature"] = feature
    start = shares(before, name, key, **labels)
    return {k: v - start.get(k, 0.0) for k, v in shares(after, name, key, **labels).items()}


def rule_psi(counts: dict[str, float], training: dict[str, float]) -> float:
    """PSI as deploy/prometheus/rules.yml records it: shares of the counts against training."""
    total = sum(counts.values())
    psi = 0.0
    for bin_, expected in training.items():
        live = max(counts.get(bin_, 0.0) / total, FLOOR)
        expected = max(expected, FLOOR)
        psi += (live - expected) * math.log(live / expected)
    return psi


def test_scoring_only_traffic_has_drift_figures(
    database_url: str, online_retail_rfm: pd.DataFrame
) -> None:
    clear_tables(database_url)
    model = SegmentModel.load(DEFAULT_MODELS)
    last_month = online_retail_rfm[online_retail_rfm["recency_days"] <= 30]
    offline = population_drift(model, last_month)
    customers = [
        {
            "customer_id": str(customer),
            "features": {
                "recency_days": float(row.recency_days),
                "frequency": int(row.frequency),
                "monetary": float(row.monetary),
            },
        }
        for customer, row in last_month.iterrows()
    ]
    with TestClient(create_app(make_settings(database_url, DEFAULT_MODELS))) as client:
        before = client.get("/metrics").text  # counters are the process's: earlier tests' too
        for start in range(0, len(customers), 1000):
            answer = client.post(
                "/v1/assignments/batch",
                params={"persist": "false"},
                json={"customers": customers[start : start + 1000]},
            )
            assert answer.status_code == 200, answer.text[:300]
        exposition = client.get("/metrics").text

    version = model.version
    # nothing was stored, so the stored drift has nothing to say
    assert metric_value(exposition, "segment_drift_samples", model_version=version) == 0
    for feature in ("recency_days", "frequency", "monetary"):
        counts = added(before, exposition, "segment_scored_feature_bin_total", "bin", feature)
        training = shares(
            exposition,
            "segment_training_feature_share",
            "bin",
            model_version=version,
            feature=feature,
        )
        assert sum(counts.values()) == len(customers)
        assert len(training) == len(model.manifest.drift_baseline.features[feature].shares)
        assert abs(rule_psi(counts, training) - offline.features[feature].psi) < 0.01, feature
    assert (
        rule_psi(
            added(before, exposition, "segment_scored_feature_bin_total", "bin", "recency_days"),
            shares(
                exposition,
                "segment_training_feature_share",
                "bin",
                model_version=version,
                feature="recency_days",
            ),
        )
        > 0.25
    )  # the population the drift alert is for
    segments = added(before, exposition, "segment_assignments_total", "segment")
    training_segments = shares(
        exposition, "segment_training_segment_share", "segment", model_version=version
    )
    assert abs(rule_psi(segments, training_segments) - offline.segment_psi) < 0.01
    assert rule_psi(segments, training_segments) > 0.25


def test_the_counters_are_exact_across_two_workers(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    clear_tables(database_url)
    requests = 200
    with segments_server(database_url, rfm_model_dir, tmp_path, workers=2) as service:
        for i in range(requests):
            # a connection each: the kernel spreads them over both workers
            answer = httpx2.post(
                f"{service.base}/v1/assignments",
                params={"persist": "false"},
                json={
                    "customer_id": f"c{i}",
                    "features": {"recency_days": i % 300, "frequency": 1 + i % 9, "monetary": i},
                },
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
        exposition = httpx2.get(f"{service.base}/metrics", timeout=30).text
    for feature in ("recency_days", "frequency", "monetary"):
        counted = metric_value(exposition, "segment_scored_feature_bin_total", feature=feature)
        assert counted == requests, feature
