"""Drift over time from the stored history: what `segments drift --since 30d --every 1d` prints and draws."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from app.metrics.drift import DriftFigures, drift_figures
from app.scoring.model import SegmentModel
from app.store import history

_SPAN = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_span(text: str) -> timedelta:
    """'30d', '12h', '2w', '15m' as a timedelta."""
    match = _SPAN.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a span like 15m, 12h, 30d or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    samples: int
    shares: dict[str, float]  # live share of each segment in the period
    figures: DriftFigures | None  # None below the minimum sample size: "insufficient"


def drift_history(
    engine: Engine,
    model: SegmentModel,
    *,
    since: timedelta,
    every: timedelta,
    min_samples: int,
    now: datetime | None = None,
) -> list[Period]:
    """The active model's stored assignments, cut into periods of `every`, each with its drift."""
    end = now or datetime.now(UTC)
    start = end - since
    with engine.connect() as conn:
        rows = history.assignments_between(conn, model.version, start, end)
    periods: list[Period] = []
    cursor = start
    position = 0
    while cursor < end:
        stop = min(cursor + every, end)
        sample: list[tuple[str, dict[str, Any]]] = []
        while position < len(rows) and rows[position][0] < stop:
            sample.append((rows[position][1], rows[position][2]))
            position += 1
        counts = dict.fromkeys(model.segments_by_key, 0)
        for key, _ in sample:
            counts[key] = counts.get(key, 0) + 1
        total = max(len(sample), 1)
        figures = (
            drift_figures(model.manifest.drift_baseline, sample)
            if len(sample) >= min_samples
            else None
        )
        periods.append(
            Period(cursor, stop, len(sample), {k: c / total for k, c in counts.items()}, figures)
        )
        cursor = stop
    return periods


def draw_chart(periods: list[Period], model: SegmentModel, path: Path) -> None:
    """Segment shares (stacked, training shares dashed) above PSI with its 0.1 and 0.25 bands."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ValueError(
            "drawing the chart needs matplotlib: install the project's `chart` extra "
            "(pip install -e '.[chart]')"
        ) from exc

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    keys = [s.key for s in sorted(model.manifest.segments, key=lambda s: s.id)]
    names = {s.key: s.name for s in model.manifest.segments}
    x = [p.start + (p.end - p.start) / 2 for p in periods]
    width = [(p.end - p.start) * 0.85 for p in periods]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True, height_ratios=[3, 2])
    # periods with too few samples get no bar: a share of 30 assignments would mislead
    below = [0.0] * len(periods)
    for key in keys:
        heights = [p.shares.get(key, 0.0) if p.figures else 0.0 for p in periods]
        top.bar(x, heights, width=width, bottom=below, label=names[key], alpha=0.85)
        below = [b + h for b, h in zip(below, heights, strict=True)]
    cumulative = 0.0
    for key in keys:  # where each boundary sat in training
        cumulative += model.manifest.drift_baseline.segment_shares[key]
        top.axhline(cumulative, color="black", linestyle="--", linewidth=0.8, alpha=0.6)
    top.set_ylim(0, 1)
    top.set_ylabel("share of assignments")
    top.set_title(f"Segment shares and drift, model {model.version} (dashed: training shares)")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)

    psi = [p.figures.segment_psi if p.figures else float("nan") for p in periods]
    bottom.plot(x, psi, marker="o", color="black", label="segment PSI")
    for name in model.feature_names:
        values = [
            p.figures.features[name].psi
            if p.figures and name in p.figures.features
            else float("nan")
            for p in periods
        ]
        bottom.plot(x, values, marker=".", linewidth=1, alpha=0.7, label=f"{name} PSI")
    bottom.axhspan(0.1, 0.25, color="orange", alpha=0.15, label="watch (0.1-0.25)")
    bottom.axhline(0.25, color="red", linewidth=1, label="alert (0.25)")
    insufficient = [xi for xi, p in zip(x, periods, strict=True) if p.figures is None]
    if insufficient:
        bottom.scatter(
            insufficient, [0] * len(insufficient), marker="x", color="grey", label="too few samples"
        )
    bottom.set_ylabel("PSI vs training (linear to 0.1, log above)")
    bottom.set_yscale("symlog", linthresh=0.1)
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
