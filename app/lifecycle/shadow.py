"""Shadow scoring: a candidate model scores live traffic too, off the request path.

Each scoring hands its validated feature columns to `offer` (a list append, no scoring), and
a background task scores what gathered every `flush_seconds` in one vectorised call, after the
responses have gone. The agreement between the active and the shadow model is counted per
pair of segment keys (keys are the identities retraining keeps, so "same key" means "same
segment"). When the queue is full, because the service is overloaded, rows are dropped and
counted rather than slowing requests down.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from app.lifecycle.holder import ModelHolder
from app.metrics.registry import SHADOW_AGREEMENTS, SHADOW_ASSIGNMENTS, SHADOW_DROPPED
from app.scoring.model import SegmentModel
from app.scoring.validation import ValidBatch

log = logging.getLogger(__name__)

# above this many rows a flush is scored in a worker thread rather than on the event loop
_INLINE_ROWS = 256


@dataclass(frozen=True)
class _Offered:
    numeric: np.ndarray
    categorical: list[list[str]]
    active: SegmentModel  # whose column order the features are in
    active_keys: list[str]


class ShadowScorer:
    def __init__(
        self, models: ModelHolder, flush_seconds: float = 0.05, max_queued_rows: int = 100_000
    ) -> None:
        self._models = models  # the shadow is models.shadow (None: no shadow)
        self._flush_seconds = flush_seconds
        self._max_queued = max_queued_rows
        self._queue: list[_Offered] = []
        self._queued_rows = 0
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._closing = False

    def offer(self, valid: ValidBatch, active: SegmentModel, active_keys: list[str]) -> None:
        """Queue scored rows for the shadow model (cheap: called on the request path)."""
        if self._models.shadow is None:
            return
        rows = len(active_keys)
        if self._queued_rows + rows > self._max_queued:
            SHADOW_DROPPED.inc(rows)
            return
        self._queue.append(_Offered(valid.numeric, valid.categorical, active, active_keys))
        self._queued_rows += rows
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="shadow-scoring")

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def flush(self) -> None:
        """Score everything queued now (the background task calls it; tests may too)."""
        queue, self._queue, self._queued_rows = self._queue, [], 0
        model = self._models.shadow
        if not queue or model is None:
            return
        rows = sum(len(item.active_keys) for item in queue)
        try:
            if rows > _INLINE_ROWS:
                pairs = await asyncio.to_thread(_compare, model, queue)
            else:
                pairs = _compare(model, queue)
        except Exception:  # a shadow must never hurt the service: log it and carry on
            log.exception("shadow model %s failed to score %d rows", model.version, rows)
            return
        for (active_version, active_key, shadow_key), count in pairs.items():
            SHADOW_ASSIGNMENTS.labels(active_version, model.version, active_key, shadow_key).inc(
                count
            )
            if active_key == shadow_key:
                SHADOW_AGREEMENTS.labels(active_version, model.version).inc(count)

    async def _run(self) -> None:
        while not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()
            # gather for a moment: one vectorised call for many requests, after their responses
            await asyncio.sleep(self._flush_seconds)
            await self.flush()
        await self.flush()


def _compare(model: SegmentModel, queue: list[_Offered]) -> Counter[tuple[str, str, str]]:
    """(active version, active key, shadow key) -> how many rows."""
    pairs: Counter[tuple[str, str, str]] = Counter()
    # the shadow takes the same features (the registry checks), maybe in another column order
    numeric = np.concatenate(
        [
            item.numeric[:, [item.active.numeric_names.index(n) for n in model.numeric_names]]
            for item in queue
        ]
    )
    categorical = [
        [
            value
            for item in queue
            for value in item.categorical[item.active.categorical_names.index(name)]
        ]
        for name in model.categorical_names
    ]
    clusters = model.score_arrays(numeric, categorical).clusters.tolist()
    keys = model.segment_keys_by_cluster
    position = 0
    for item in queue:
        for active_key in item.active_keys:
            pairs[item.active.version, active_key, keys[clusters[position]]] += 1
            position += 1
    return pairs
