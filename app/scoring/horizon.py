"""When a customer's segment next changes if nothing but time happens.

Recency grows by one every day while the other features stay; so a customer's segment can
change with no event at all. For each customer we find the first whole day on which the model
puts them elsewhere: with the compiled KMeans scorer in closed form (CompiledScorer.crossing),
then checked with the scorer itself on that day and the day before, so the answer is the day
the real labels change, whatever rounding did at the boundary. A model the compiler does not
know gets the periodic fallback: every customer is due again the next day.
"""

from __future__ import annotations

import math

import numpy as np

from app.scoring.compiled import UnsupportedPipeline
from app.scoring.model import SegmentModel

RECENCY = "recency_days"
_NUDGES = 4  # days the check may move the closed-form answer; more means something is off


def days_until_change(model: SegmentModel, numeric: np.ndarray) -> list[int | None]:
    """For each row of `numeric` (the model's numeric features, schema order, recency as of
    today), the whole days from today after which the segment first differs; None if time
    alone never changes it within the model's range of recency."""
    rows = numeric.shape[0]
    if rows == 0:
        return []
    numeric_names = [f.name for f in model.validator.numeric]
    if RECENCY not in numeric_names:
        return [None] * rows  # nothing moves with time
    axis = numeric_names.index(RECENCY)
    limit = model.validator.numeric[axis].maximum
    no_categories: list[list[str]] = [[] for _ in model.validator.categorical]
    if no_categories or model.compiled is None:
        return [1] * rows  # the periodic fallback: re-score every day
    try:
        crossing = model.compiled.crossing(numeric, no_categories, axis)
    except UnsupportedPipeline:
        return [1] * rows
    today = numeric[:, axis]
    current = model.score_arrays(numeric, no_categories).clusters
    answers: list[int | None] = []
    candidates: list[int] = []
    for index, (now, cross) in enumerate(zip(today.tolist(), crossing.tolist(), strict=True)):
        if not math.isfinite(cross) or (limit is not None and cross > limit):
            answers.append(None)
            continue
        answers.append(max(1, math.ceil(cross - now)))
        candidates.append(index)
    if candidates:
        _check(model, numeric, axis, current, answers, candidates, limit)
    return answers


def _check(
    model: SegmentModel,
    numeric: np.ndarray,
    axis: int,
    current: np.ndarray,
    answers: list[int | None],
    candidates: list[int],
    limit: float | None,
) -> None:
    """Move each candidate day until the label differs on it and not the day before."""
    pending = np.array(candidates, dtype=np.intp)
    for _ in range(_NUDGES + 1):
        if not len(pending):
            break
        days = np.array([answers[i] for i in pending], dtype=np.float64)
        on_day = _clusters_after(model, numeric[pending], axis, days)
        before = _clusters_after(model, numeric[pending], axis, days - 1)
        changed = on_day != current[pending]
        still = (before == current[pending]) | (days <= 1)
        wrong = []
        for index, ok_on, ok_before, day in zip(
            pending.tolist(), changed.tolist(), still.tolist(), days.tolist(), strict=True
        ):
            if ok_on and ok_before:
                continue
            answers[index] = int(day) + (1 if not ok_on else -1)
            wrong.append(index)
        pending = np.array(wrong, dtype=np.intp)
    for index in pending.tolist():  # rounding cannot explain this: fall back to tomorrow
        answers[index] = 1
    if limit is not None:
        recency = numeric[:, axis]
        for index in candidates:
            day = answers[index]
            if day is not None and recency[index] + day > limit:
                answers[index] = None


def _clusters_after(
    model: SegmentModel, numeric: np.ndarray, axis: int, days: np.ndarray
) -> np.ndarray:
    moved = numeric.copy()
    moved[:, axis] += days
    return model.score_arrays(moved, [[] for _ in model.validator.categorical]).clusters
