"""Drift of everything scored, stored or not: per-feature bin counters Prometheus sums across
workers and replicas, and the training shares of the same bins, from which recording rules in
deploy/prometheus/rules.yml compute PSI over any window.

The stored drift (app.metrics.live) reads the memberships in PostgreSQL, so a caller that only
scores (`?persist=false`: a personalization backend that asks and stores nothing) left no trace
in it (issue 13). Counters cost a few increments per request, need no shared state but
Prometheus', and stay exact with any number of workers: each bin's count is a counter, and a
share is a ratio of increases.

Bins are the training baseline's (app.scoring.manifest.FeatureBaseline): numeric features by
their interior edges ((-inf, e1], (e1, e2], …, (en, inf)), categorical ones by category plus
one bin for categories unseen in training. The `bin` label is the bin's index, so a series'
cardinality is bounded by the manifest, whatever clients send.
"""

from __future__ import annotations

from bisect import bisect_left

import numpy as np
from prometheus_client import Counter, Gauge

from app.metrics.registry import labelled
from app.scoring.manifest import FeatureBaseline
from app.scoring.model import SegmentModel
from app.scoring.validation import ValidBatch

SCORED_FEATURE_BINS = Counter(
    "segment_scored_feature_bin",
    "Customers scored (stored or not) whose feature fell in each training bin; with "
    "segment_training_feature_share, the recording rules' PSI of scored traffic.",
    ["model_version", "feature", "bin"],
)
TRAINING_FEATURE_SHARE = Gauge(
    "segment_training_feature_share",
    "The share of the training customers in each feature bin (the manifest's drift baseline).",
    ["model_version", "feature", "bin"],
    multiprocess_mode="max",  # every worker serving the version reports the same constant
)
TRAINING_SEGMENT_SHARE = Gauge(
    "segment_training_segment_share",
    "The share of the training customers in each segment (the manifest's drift baseline).",
    ["model_version", "segment"],
    multiprocess_mode="max",
)


def publish_baseline(model: SegmentModel) -> None:
    """Training shares of the model's bins and segments, and every bin's counter from zero (a
    bin nobody falls in must still count as 0 in the shares)."""
    baseline = model.manifest.drift_baseline
    for key, share in baseline.segment_shares.items():
        TRAINING_SEGMENT_SHARE.labels(model.version, key).set(share)
    for feature, bins in baseline.features.items():
        for index, share in enumerate(bins.shares):
            TRAINING_FEATURE_SHARE.labels(model.version, feature, str(index)).set(share)
            SCORED_FEATURE_BINS.labels(model.version, feature, str(index))


def count_scored(model: SegmentModel, valid: ValidBatch) -> None:
    """Count the scored customers' features into their training bins."""
    baselines = model.manifest.drift_baseline.features
    rows = len(valid.customer_ids)
    for column, name in enumerate(model.numeric_names):
        numbers = valid.numeric[:, column]
        _count(model.version, name, _numeric_bins(baselines[name], numbers, rows))
    for categories, name in zip(valid.categorical, model.categorical_names, strict=True):
        _count(model.version, name, _category_bins(baselines[name], categories))


def _numeric_bins(baseline: FeatureBaseline, values: np.ndarray, rows: int) -> dict[int, int]:
    edges = baseline.edges or []
    if rows == 1:  # a single request: no numpy call for one value
        return {bisect_left(edges, float(values[0])): 1}
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return {index: int(count) for index, count in enumerate(counts) if count}


def _category_bins(baseline: FeatureBaseline, values: list[str]) -> dict[int, int]:
    categories = baseline.categories or []
    index = {category: i for i, category in enumerate(categories)}
    counts: dict[int, int] = {}
    for value in values:
        position = index.get(value, len(categories))  # the last bin: unseen in training
        counts[position] = counts.get(position, 0) + 1
    return counts


def _count(version: str, feature: str, bins: dict[int, int]) -> None:
    # for every feature of every scored request: the labelled children are kept
    for index, count in bins.items():
        labelled(SCORED_FEATURE_BINS, version, feature, str(index)).inc(count)
