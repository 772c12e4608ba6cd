"""Drift of a whole population of customers against a model's training baseline (offline proofs)."""

from __future__ import annotations

import pandas as pd

from app.metrics.drift import DriftFigures, drift_figures
from app.scoring.model import SegmentModel


def population_drift(model: SegmentModel, customers: pd.DataFrame) -> DriftFigures:
    """Score every customer (rows of the model's features) and compare the lot to training."""
    scores = model.score_frame(customers)
    keys = [model.segment_keys_by_cluster[c] for c in scores.clusters.tolist()]
    columns = [customers[name].tolist() for name in model.feature_names]
    records = [
        dict(zip(model.feature_names, values, strict=True)) for values in zip(*columns, strict=True)
    ]
    figures = drift_figures(model.manifest.drift_baseline, list(zip(keys, records, strict=True)))
    if figures is None:
        raise ValueError("no customers to compare")
    return figures
