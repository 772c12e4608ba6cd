"""Population stability index of live traffic against the training baseline in the manifest."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

from app.scoring.manifest import DriftBaseline, FeatureBaseline

# An empty bin on either side would make PSI infinite; a share this small stands in for zero.
EPSILON = 1e-4


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bins; 0 for identical shares, > 0.25 is a major shift."""
    e = np.clip(np.asarray(expected, dtype=np.float64), EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), EPSILON, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def bin_shares(baseline: FeatureBaseline, values: Iterable[Any]) -> np.ndarray:
    """Shares of `values` in the baseline's bins (numeric edges, or categories plus 'unseen')."""
    if baseline.edges is not None:
        numbers = np.fromiter((float(v) for v in values), dtype=np.float64)
        bins = np.searchsorted(np.asarray(baseline.edges), numbers, side="left")
        counts = np.bincount(bins, minlength=len(baseline.edges) + 1)
    else:
        categories = baseline.categories or []
        index = {c: i for i, c in enumerate(categories)}
        unseen = len(categories)
        positions = np.fromiter((index.get(str(v), unseen) for v in values), dtype=np.int64)
        counts = np.bincount(positions, minlength=unseen + 1)
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def js_distance(
    expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray
) -> float:
    """Jensen-Shannon distance (base 2): 0 for identical shares, 1 for disjoint ones; never infinite."""
    return float(
        jensenshannon(
            np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64), base=2
        )
    )


def outside_share(baseline: FeatureBaseline, values: Sequence[Any]) -> float:
    """Share of values outside what training saw: beyond its range, or an unseen category."""
    if not values:
        return 0.0
    if baseline.categories is not None:
        known = set(baseline.categories)
        return sum(1 for v in values if str(v) not in known) / len(values)
    if baseline.minimum is None or baseline.maximum is None:
        return 0.0
    numbers = np.asarray(values, dtype=np.float64)
    return float(((numbers < baseline.minimum) | (numbers > baseline.maximum)).mean())


@dataclass(frozen=True)
class FeatureDrift:
    psi: float
    js_distance: float
    outside_share: float


@dataclass(frozen=True)
class DriftFigures:
    samples: int
    segment_psi: float
    segment_js_distance: float
    features: dict[str, FeatureDrift]


def drift_figures(
    baseline: DriftBaseline, sample: Sequence[tuple[str, Mapping[str, Any]]]
) -> DriftFigures | None:
    """Segment-share and per-feature drift over (segment key, features) pairs; None if empty."""
    if not sample:
        return None
    keys = list(baseline.segment_shares)
    index = {k: i for i, k in enumerate(keys)}
    counts = np.bincount([index[s] for s, _ in sample if s in index], minlength=len(keys))
    live_shares = counts / max(counts.sum(), 1)
    trained_shares = [baseline.segment_shares[k] for k in keys]
    features: dict[str, FeatureDrift] = {}
    for name, feature_baseline in baseline.features.items():
        values = [f[name] for _, f in sample if name in f]
        if values:
            live = bin_shares(feature_baseline, values)
            features[name] = FeatureDrift(
                psi(feature_baseline.shares, live),
                js_distance(feature_baseline.shares, live),
                outside_share(feature_baseline, values),
            )
    return DriftFigures(
        len(sample),
        psi(trained_shares, live_shares),
        js_distance(trained_shares, live_shares),
        features,
    )
