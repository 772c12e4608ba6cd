"""Drift figures: PSI arithmetic, and live traffic against the default model's training baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from app.main import create_app
from app.metrics.drift import bin_shares, js_distance, outside_share, psi
from app.scoring.manifest import FeatureBaseline
from tests.conftest import DEFAULT_MODELS, clear_tables, make_settings, metric_value


def test_psi_is_zero_for_equal_shares_and_grows_with_shift() -> None:
    assert psi([0.25] * 4, [0.25] * 4) == pytest.approx(0.0)
    small = psi([0.25] * 4, [0.27, 0.23, 0.25, 0.25])
    large = psi([0.25] * 4, [0.6, 0.2, 0.1, 0.1])
    assert 0 < small < 0.01 < 0.25 < large
    # textbook value: sum((a-e) ln(a/e)) for a 2-bin 50/50 -> 80/20 shift
    assert psi([0.5, 0.5], [0.8, 0.2]) == pytest.approx(0.3 * np.log(1.6) + (-0.3) * np.log(0.4))
    # an empty live bin gives a finite (large) figure, not infinity
    assert np.isfinite(psi([0.5, 0.5], [1.0, 0.0]))


def test_js_distance_is_bounded_and_symmetric() -> None:
    assert js_distance([0.25] * 4, [0.25] * 4) == pytest.approx(0.0)
    assert js_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)  # disjoint: the maximum
    assert js_distance([0.5, 0.5], [0.8, 0.2]) == pytest.approx(js_distance([0.8, 0.2], [0.5, 0.5]))
    assert 0 < js_distance([0.5, 0.5], [0.8, 0.2]) < 1


def test_outside_share_counts_values_training_never_saw() -> None:
    numeric = FeatureBaseline(edges=[1.0], shares=[0.5, 0.5], minimum=0.0, maximum=10.0)
    assert outside_share(numeric, [-1.0, 0.0, 5.0, 10.0, 11.0]) == pytest.approx(0.4)
    categorical = FeatureBaseline(categories=["a", "b"], shares=[0.5, 0.5, 0.0])
    assert outside_share(categorical, ["a", "zzz", "b", "yyy"]) == pytest.approx(0.5)


def test_bins_follow_the_baseline_edges_and_categories() -> None:
    numeric = FeatureBaseline(edges=[1.0, 2.0], shares=[0.3, 0.3, 0.4])
    assert bin_shares(numeric, [0.5, 1.0, 1.5, 2.0, 9.0]).tolist() == [0.4, 0.4, 0.2]
    categorical = FeatureBaseline(categories=["a", "b"], shares=[0.5, 0.5, 0.0])
    assert bin_shares(categorical, ["a", "b", "b", "zzz"]).tolist() == [0.25, 0.5, 0.25]


def _replay(client: TestClient, frame: pd.DataFrame, prefix: str) -> None:
    records = frame.reset_index().to_dict(orient="records")
    for start in range(0, len(records), 2000):
        chunk = records[start : start + 2000]
        customers = [
            {
                "customer_id": f"{prefix}{r['customer_id']}-{start + i}",
                "features": {
                    "recency_days": r["recency_days"],
                    "frequency": int(r["frequency"]),
                    "monetary": r["monetary"],
                },
            }
            for i, r in enumerate(chunk)
        ]
        response = client.post("/v1/assignments/batch", json={"customers": customers})
        assert response.status_code == 200, response.text


def _drift(client: TestClient) -> tuple[float, dict[str, float], float]:
    text = client.get("/metrics").text
    features = {
        f: metric_value(text, "segment_feature_drift_psi", feature=f)
        for f in ("recency_days", "frequency", "monetary")
    }
    return (
        metric_value(text, "segment_drift_psi"),
        features,
        metric_value(text, "segment_drift_samples"),
    )


FEATURES = ("recency_days", "frequency", "monetary")


def _other_figures(client: TestClient) -> tuple[float, dict[str, float], dict[str, float]]:
    """(segment JS distance, per-feature JS distance, per-feature share outside training)."""
    text = client.get("/metrics").text
    return (
        metric_value(text, "segment_drift_js_distance"),
        {f: metric_value(text, "segment_feature_drift_js_distance", feature=f) for f in FEATURES},
        {f: metric_value(text, "segment_feature_outside_share", feature=f) for f in FEATURES},
    )


def test_drift_is_quiet_for_training_traffic_and_loud_for_shifted(
    database_url: str, online_retail_rfm: pd.DataFrame
) -> None:
    clear_tables(database_url)
    settings = make_settings(database_url, DEFAULT_MODELS, drift_window=4000)
    with TestClient(create_app(settings)) as client:
        assert "segment_drift_psi{" not in client.get("/metrics").text  # no traffic, no figure
        _replay(client, online_retail_rfm.head(50), "few-")
        # 50 assignments are below SEGMENTS_DRIFT_MIN_SAMPLES (100): still no figure, no false alarm
        text = client.get("/metrics").text
        assert "segment_drift_psi{" not in text
        assert "segment_drift_window_psi{" not in text
        assert metric_value(text, "segment_drift_samples") == 50
        assert metric_value(text, "segment_drift_window_samples", window="1h") == 50
        clear_tables(database_url)
        sample = online_retail_rfm.sample(n=4000, replace=True, random_state=3)
        _replay(client, sample, "same-")
        segment_psi, feature_psi, samples = _drift(client)
        assert samples == 4000
        assert segment_psi < 0.02, segment_psi
        assert all(v < 0.02 for v in feature_psi.values()), feature_psi
        segment_js, feature_js, outside = _other_figures(client)
        assert segment_js < 0.05, segment_js
        assert all(v < 0.05 for v in feature_js.values()), feature_js
        assert all(v == 0 for v in outside.values()), outside  # training customers are in range

        # the market moves: customers come back less often and spend more
        shifted = sample.assign(
            recency_days=sample["recency_days"] + 120, monetary=sample["monetary"] * 3
        )
        _replay(client, shifted, "moved-")
        segment_psi, feature_psi, samples = _drift(client)
        assert samples == 4000  # the window holds only the shifted traffic now
        assert segment_psi > 0.25, segment_psi
        assert feature_psi["recency_days"] > 0.25, feature_psi
        assert feature_psi["monetary"] > 0.25, feature_psi
        assert feature_psi["frequency"] < 0.02  # unchanged feature stays quiet
        segment_js, feature_js, outside = _other_figures(client)
        assert segment_js > 0.2, segment_js
        assert feature_js["monetary"] > 0.2, feature_js
        assert feature_js["frequency"] < 0.05, feature_js
        assert outside["recency_days"] > 0.05, outside  # +120 days pushes the oldest past training
        assert outside["frequency"] == 0, outside

        # the time windows hold both replays (all within the last hour): drift shows there too
        text = client.get("/metrics").text
        for window in ("1h", "24h"):
            assert metric_value(text, "segment_drift_window_samples", window=window) == 8000
            assert metric_value(text, "segment_drift_window_psi", window=window) > 0.1
