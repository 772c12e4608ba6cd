"""Gauges computed when Prometheus scrapes: model info and drift over the shared store.

Drift is computed from the stored assignments, where every worker's and every replica's
traffic meets, so the figure is the same whichever process answers the scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.metrics.drift import DriftFigures, drift_figures
from app.scoring.model import SegmentModel
from app.store import repository

log = logging.getLogger(__name__)


class LiveCollector(Collector):
    def __init__(
        self,
        model: Callable[[], SegmentModel],
        engine: Engine,
        window: int,
        cache_seconds: float,
        min_samples: int,
    ) -> None:
        self._min_samples = min_samples
        self._model = model
        self._engine = engine
        self._window = window
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, str, DriftFigures | None] | None = None

    def drift(self) -> DriftFigures | None:
        """The active model's drift over the recent window, reused for `cache_seconds`."""
        model = self._model()
        with self._lock:
            now = time.monotonic()
            if (
                self._cached
                and self._cached[1] == model.version
                and now - self._cached[0] < self._cache_seconds
            ):
                return self._cached[2]
            with self._engine.connect() as conn:
                sample = repository.recent_assignments(conn, model.version, self._window)
            figures = drift_figures(model.manifest.drift_baseline, sample)
            self._cached = (now, model.version, figures)
            return figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        model = self._model()
        info = GaugeMetricFamily(
            "segment_model_info",
            "The model this process serves (always 1); its version and description in labels.",
            labels=["version", "kind", "segments", "trained_at"],
        )
        info.add_metric(
            [
                model.version,
                model.manifest.kind,
                str(len(model.manifest.segments)),
                model.manifest.trained_at.isoformat(),
            ],
            1.0,
        )
        yield info
        try:
            figures = self.drift()
        except SQLAlchemyError as exc:
            log.warning("drift not computed, the store is unavailable: %s", exc.__class__.__name__)
            return
        segment = GaugeMetricFamily(
            "segment_drift_psi",
            "Population stability index of segment shares over the recent window vs training (0.1 warn, 0.25 alert).",
            labels=["model_version"],
        )
        feature = GaugeMetricFamily(
            "segment_feature_drift_psi",
            "Population stability index of each feature over the recent window vs its training bins.",
            labels=["model_version", "feature"],
        )
        samples = GaugeMetricFamily(
            "segment_drift_samples",
            "How many stored assignments the drift figures cover (at most SEGMENTS_DRIFT_WINDOW).",
            labels=["model_version"],
        )
        segment_js = GaugeMetricFamily(
            "segment_drift_js_distance",
            "Jensen-Shannon distance (base 2, 0 to 1) of segment shares over the recent window vs training.",
            labels=["model_version"],
        )
        feature_js = GaugeMetricFamily(
            "segment_feature_drift_js_distance",
            "Jensen-Shannon distance (base 2, 0 to 1) of each feature over the recent window vs its training bins.",
            labels=["model_version", "feature"],
        )
        outside = GaugeMetricFamily(
            "segment_feature_outside_share",
            "Share of recent values outside training: beyond the training range, or an unseen category.",
            labels=["model_version", "feature"],
        )
        samples.add_metric([model.version], float(figures.samples if figures else 0))
        # a handful of assignments says nothing about the population: no figure, no false alarm
        if figures is not None and figures.samples >= self._min_samples:
            segment.add_metric([model.version], figures.segment_psi)
            segment_js.add_metric([model.version], figures.segment_js_distance)
            for name, drift in figures.features.items():
                feature.add_metric([model.version, name], drift.psi)
                feature_js.add_metric([model.version, name], drift.js_distance)
                outside.add_metric([model.version, name], drift.outside_share)
        yield from (segment, feature, segment_js, feature_js, outside, samples)
