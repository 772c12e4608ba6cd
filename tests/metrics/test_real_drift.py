"""The drift statistics on real Online Retail customers: quiet when nothing changed, loud when it did."""

from __future__ import annotations

import pandas as pd
import pytest

from app.datafiles import normalise_ids, read_table
from app.metrics.evaluation import population_drift
from app.scoring.model import SegmentModel
from tests.conftest import DEFAULT_MODELS, ONLINE_RETAIL


@pytest.fixture(scope="module")
def model() -> SegmentModel:
    return SegmentModel.load(DEFAULT_MODELS)


def test_a_replay_of_training_customers_stays_below_the_warning_band(
    model: SegmentModel, online_retail_rfm: pd.DataFrame
) -> None:
    for seed in range(3):
        figures = population_drift(model, online_retail_rfm.sample(frac=0.5, random_state=seed))
        assert figures.segment_psi < 0.1
        assert all(f.psi < 0.1 for f in figures.features.values())


def test_the_last_month_alone_is_an_alert(
    model: SegmentModel, online_retail_rfm: pd.DataFrame
) -> None:
    last_month = online_retail_rfm[online_retail_rfm["recency_days"] <= 30]
    figures = population_drift(model, last_month)
    assert figures.samples > 1000
    assert figures.segment_psi > 0.25
    assert figures.features["recency_days"].psi > 0.25


@pytest.mark.parametrize("country", ["Germany", "France"])
def test_one_countrys_customers_rise_above_the_warning_band(
    model: SegmentModel, online_retail_rfm: pd.DataFrame, country: str
) -> None:
    raw = read_table(ONLINE_RETAIL, ["CustomerID", "Country"])
    ids = set(normalise_ids(raw.loc[raw["Country"] == country, "CustomerID"]).dropna())
    figures = population_drift(model, online_retail_rfm[online_retail_rfm.index.isin(ids)])
    assert figures.samples > 80
    assert figures.segment_psi > 0.1
