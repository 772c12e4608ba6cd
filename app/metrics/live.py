"""Gauges computed when Prometheus scrapes: model info, drift and the refreshers' lag, over the
shared store.

Drift is computed from the stored assignments, where every worker's and every replica's
traffic meets, so the figure is the same whichever process answers the scrape. Two kinds of
window: the last N assignments (the contract's segment_drift_psi), and time windows such as the
last hour and day (segment_drift_window_*, labelled by window).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.clock import Clock, SystemClock
from app.metrics.drift import DriftFigures, drift_figures
from app.scoring.model import SegmentModel
from app.store import events, history, rescoring

log = logging.getLogger(__name__)

COUNT_WINDOW = "count"


class LiveCollector(Collector):
    def __init__(
        self,
        model: Callable[[], SegmentModel],
        shadow: Callable[[], SegmentModel | None],
        engine: Engine,
        window: int,
        cache_seconds: float,
        min_samples: int,
        time_windows: Sequence[tuple[str, timedelta]] = (),
        max_rows: int = 50_000,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._model = model
        self._shadow = shadow
        self._engine = engine
        self._window = window
        self._cache_seconds = cache_seconds
        self._min_samples = min_samples
        self._time_windows = list(time_windows)
        self._max_rows = max_rows
        self._lock = threading.Lock()
        self._cached: dict[str, tuple[float, str, DriftFigures | None]] = {}

    def drift(self, window: str = COUNT_WINDOW) -> DriftFigures | None:
        """The active model's drift over a window, reused for `cache_seconds`."""
        model = self._model()
        with self._lock:
            now = time.monotonic()
            cached = self._cached.get(window)
            if cached and cached[1] == model.version and now - cached[0] < self._cache_seconds:
                return cached[2]
            with self._engine.connect() as conn:
                if window == COUNT_WINDOW:
                    sample = history.recent_assignments(conn, model.version, self._window)
                else:
                    span = dict(self._time_windows)[window]
                    since = self._clock.now() - span
                    # a busy day can hold millions: the newest max_rows of it stand for the window
                    sample = history.recent_assignments(
                        conn, model.version, self._max_rows, since=since
                    )
            figures = drift_figures(model.manifest.drift_baseline, sample)
            self._cached[window] = (now, model.version, figures)
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
        shadow = self._shadow()
        shadow_info = GaugeMetricFamily(
            "segment_shadow_model_info",
            "The shadow model this process scores live traffic with too (1), if any.",
            labels=["version", "active_version"],
        )
        if shadow is not None:
            shadow_info.add_metric([shadow.version, model.version], 1.0)
        yield shadow_info
        try:
            yield from self._refresh_families(model)
            yield from self._count_window(model)
            yield from self._time_window_families(model)
        except SQLAlchemyError as exc:
            log.warning("drift not computed, the store is unavailable: %s", exc.__class__.__name__)

    def _refresh_families(self, model: SegmentModel) -> Iterator[GaugeMetricFamily]:
        """How far the refreshers are behind, fleet-wide (from the store, like drift)."""
        now = self._clock.now()
        with self._engine.connect() as conn:
            due, earliest = events.due_summary(conn, now)
            behind = rescoring.memberships_behind(conn, model.version)
        yield GaugeMetricFamily(
            "segment_rescore_behind",
            "Memberships a model other than the one served made: the re-score after a model "
            "switch still to do (0 when done).",
            value=behind,
        )
        yield GaugeMetricFamily(
            "segment_customers_due",
            "Customers whose segment time has changed and who are not re-scored yet.",
            value=due,
        )
        yield GaugeMetricFamily(
            "segment_refresh_lag_seconds",
            "How long the most overdue customer has waited to be re-scored (0: none due).",
            value=(now - earliest).total_seconds() if earliest is not None else 0.0,
        )

    def _count_window(self, model: SegmentModel) -> Iterator[GaugeMetricFamily]:
        figures = self.drift(COUNT_WINDOW)
        version = [model.version]
        segment = GaugeMetricFamily(
            "segment_drift_psi",
            "Population stability index of segment shares over the last SEGMENTS_DRIFT_WINDOW "
            "assignments vs training (0.1 warn, 0.25 alert).",
            labels=["model_version"],
        )
        feature = GaugeMetricFamily(
            "segment_feature_drift_psi",
            "Population stability index of each feature over the recent window vs its training bins.",
            labels=["model_version", "feature"],
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
        samples = GaugeMetricFamily(
            "segment_drift_samples",
            "How many stored assignments the drift figures cover (at most SEGMENTS_DRIFT_WINDOW).",
            labels=["model_version"],
        )
        samples.add_metric(version, float(figures.samples if figures else 0))
        # a handful of assignments says nothing about the population: no figure, no false alarm
        if figures is not None and figures.samples >= self._min_samples:
            segment.add_metric(version, figures.segment_psi)
            segment_js.add_metric(version, figures.segment_js_distance)
            for name, drift in figures.features.items():
                feature.add_metric([*version, name], drift.psi)
                feature_js.add_metric([*version, name], drift.js_distance)
                outside.add_metric([*version, name], drift.outside_share)
        yield from (segment, feature, segment_js, feature_js, outside, samples)

    def _time_window_families(self, model: SegmentModel) -> Iterator[GaugeMetricFamily]:
        if not self._time_windows:
            return
        segment = GaugeMetricFamily(
            "segment_drift_window_psi",
            "Population stability index of segment shares over a time window vs training.",
            labels=["model_version", "window"],
        )
        segment_js = GaugeMetricFamily(
            "segment_drift_window_js_distance",
            "Jensen-Shannon distance of segment shares over a time window vs training.",
            labels=["model_version", "window"],
        )
        feature = GaugeMetricFamily(
            "segment_feature_drift_window_psi",
            "Population stability index of each feature over a time window vs its training bins.",
            labels=["model_version", "feature", "window"],
        )
        outside = GaugeMetricFamily(
            "segment_feature_outside_window_share",
            "Share of a time window's values outside training (beyond its range, or unseen categories).",
            labels=["model_version", "feature", "window"],
        )
        samples = GaugeMetricFamily(
            "segment_drift_window_samples",
            "Stored assignments behind a time window's figures (the newest SEGMENTS_DRIFT_MAX_ROWS at most).",
            labels=["model_version", "window"],
        )
        for window, _ in self._time_windows:
            figures = self.drift(window)
            labels = [model.version, window]
            samples.add_metric(labels, float(figures.samples if figures else 0))
            if figures is None or figures.samples < self._min_samples:
                continue
            segment.add_metric(labels, figures.segment_psi)
            segment_js.add_metric(labels, figures.segment_js_distance)
            for name, drift in figures.features.items():
                feature.add_metric([model.version, name, window], drift.psi)
                outside.add_metric([model.version, name, window], drift.outside_share)
        yield from (segment, segment_js, feature, outside, samples)
