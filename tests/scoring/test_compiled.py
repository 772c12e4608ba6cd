"""The compiled scorer gives exactly scikit-learn's labels, or the model falls back to scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from app.scoring.artifact import Artifact, load_artifact
from app.scoring.compiled import CompiledScorer, UnsupportedPipeline
from app.scoring.model import SegmentModel
from tests.conftest import BANK_CLIENTS, DEFAULT_MODELS


def _sklearn_labels(model: SegmentModel, frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(model.artifact.pipeline.predict(frame[model.feature_names]))


def test_every_online_retail_customer_gets_sklearns_label(online_retail_rfm: pd.DataFrame) -> None:
    model = SegmentModel.load(DEFAULT_MODELS)
    assert model.compiled is not None
    frame = online_retail_rfm
    assert len(frame) == 4339
    ours = model.score_frame(frame).clusters
    assert np.array_equal(ours, _sklearn_labels(model, frame))


def test_random_and_edge_inputs_agree_with_sklearn() -> None:
    model = SegmentModel.load(DEFAULT_MODELS)
    rng = np.random.default_rng(42)
    n = 50_000
    frame = pd.DataFrame(
        {
            "recency_days": np.concatenate([rng.uniform(0, 36_500, n), [0, 36_500, 0, 1e-9]]),
            "frequency": np.concatenate(
                [rng.integers(1, 1_000_000, n).astype(float), [1, 1_000_000, 1_000_000, 1]]
            ),
            "monetary": np.concatenate([rng.lognormal(5, 4, n), [0, 1e9, 0, 1e-300]]),
        }
    )
    assert np.array_equal(model.score_frame(frame).clusters, _sklearn_labels(model, frame))
    # single rows go through the same arithmetic as batches
    for record in frame.tail(4).to_dict(orient="records"):
        row = {str(k): float(v) for k, v in record.items()}
        single = model.score([row]).clusters[0]
        assert single == _sklearn_labels(model, pd.DataFrame([row]))[0]


def test_categorical_model_agrees_including_unknown_categories(bank_model_dir: Path) -> None:
    model = SegmentModel.load(bank_model_dir)
    assert model.compiled is not None
    frame = pd.read_csv(BANK_CLIENTS)
    assert np.array_equal(model.score_frame(frame).clusters, _sklearn_labels(model, frame))
    rng = np.random.default_rng(1)
    mixed = frame.sample(n=3000, replace=True, random_state=2).reset_index(drop=True)
    for column in ("job", "education"):
        unknown = rng.random(len(mixed)) < 0.2
        mixed.loc[unknown, column] = "never-seen"
    mixed["balance"] = rng.integers(-20_000, 200_000, len(mixed))
    assert np.array_equal(model.score_frame(mixed).clusters, _sklearn_labels(model, mixed))


def test_unknown_steps_fall_back_to_sklearn_and_say_so(rfm_model_dir: Path) -> None:
    artifact = load_artifact(rfm_model_dir)
    sample = pd.DataFrame(artifact.manifest.parity_sample.rows)
    identity = FunctionTransformer(feature_names_out="one-to-one").fit(sample)
    wrapped = Pipeline([("identity", identity), *artifact.pipeline.steps])
    with pytest.raises(UnsupportedPipeline):
        CompiledScorer.from_pipeline(wrapped, ["recency_days", "frequency", "monetary"], [])
    model = SegmentModel(Artifact(artifact.source, artifact.manifest, wrapped, artifact.sha256))
    assert model.compiled is None
    assert "not compiled" in model.scorer_note
    rows = artifact.manifest.parity_sample.rows
    assert model.score(rows).clusters.tolist() == artifact.manifest.parity_sample.labels
