"""Keeping segments true as time passes: customers whose due time has come are re-scored.

A customer's segment can change with no event, because recency grows every day. Every write
from aggregates records when that next happens (app.scoring.horizon, exact for the compiled
KMeans scorer); this refresher re-scores the customers whose moment has come, in chunks, each
chunk one transaction: claim the due rows (FOR UPDATE SKIP LOCKED, so every worker and replica
runs one and they share the work without a leader), score them as of now, store their
assignments with feed events of cause `time`, record their next due time, commit. A refresher
killed mid-chunk loses nothing: its transaction rolls back and the rows are due again.

The same queue carries the customers that need re-scoring for another reason, each with that
cause on the feed: behaviour loaded in bulk (`segments ingest`, cause assignment) and a model
switch (every customer re-segmented by the new model, cause model).

Each worker's refresher wakes every SEGMENTS_REFRESH_SECONDS and works until nothing is due, so
a membership is never staler than that interval plus one round's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy.exc import SQLAlchemyError

from app.clock import Clock
from app.errors import StoreUnavailable
from app.lifecycle.holder import ModelHolder
from app.lifecycle.shadow import ShadowScorer
from app.metrics.registry import REFRESH_DURATION, REFRESHED
from app.service.activity import follows_purchases, rescore
from app.service.assignments import AssignmentWriter
from app.service.store import Store
from app.store.events import Activity, claim_due, forget, set_due
from app.store.tables import Cause

log = logging.getLogger(__name__)


class Refresher:
    def __init__(
        self,
        models: ModelHolder,
        store: Store,
        writer: AssignmentWriter,
        shadow: ShadowScorer,
        clock: Clock,
        *,
        every_seconds: float,
        chunk: int,
    ) -> None:
        self._models = models
        self._store = store
        self._writer = writer
        self._shadow = shadow
        self._clock = clock
        self.every_seconds = every_seconds
        self.chunk = chunk
        self._task: asyncio.Task[None] | None = None

    def refresh_chunk(self) -> int:
        """Re-score up to one chunk of due customers in one transaction; how many."""
        model = self._models.model
        if not follows_purchases(model):
            return 0
        now = self._clock.now()
        with self._store.transaction("refresh", writing=True) as conn:
            due = claim_due(conn, now, self.chunk)
            if not due:
                return 0
            by_cause: dict[Cause, dict[str, Activity]] = {}
            for activity, cause in due:
                by_cause.setdefault(cause, {})[activity.customer_id] = activity
            suppressed: set[str] = set()
            for cause, activity_of_due in by_cause.items():
                rescored = rescore(model, activity_of_due, {}, now, self._shadow)
                suppressed |= self._writer.store(conn, rescored.assignments, cause)
                set_due(conn, rescored.due)
                REFRESHED.labels(cause.value).inc(len(activity_of_due))
            if suppressed:  # erased meanwhile: nothing of theirs may stay
                forget(conn, sorted(suppressed))
        return len(due)

    def refresh_due(self) -> int:
        """Re-score every customer due now, chunk by chunk; how many."""
        total = 0
        started = time.perf_counter()
        while True:
            done = self.refresh_chunk()
            total += done
            if done < self.chunk:
                break
        if total:
            REFRESH_DURATION.observe(time.perf_counter() - started)
        return total

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="refresher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        failing = False
        while True:
            started = time.monotonic()
            try:
                refreshed = await asyncio.to_thread(self.refresh_due)
            except (SQLAlchemyError, StoreUnavailable) as exc:
                if not failing:  # once, not every round; and again when it works
                    log.warning("cannot re-score due customers, retrying: %s", exc)
                failing = True
            except Exception:  # the timer must outlive any one bad round
                log.exception("re-scoring due customers failed")
            else:
                if failing:
                    log.warning("re-scoring due customers works again")
                failing = False
                if refreshed:
                    log.info("re-scored %d customers whose segment time changed", refreshed)
            # rounds start every `every_seconds`: a long round shortens the wait after it
            await asyncio.sleep(max(0.0, self.every_seconds - (time.monotonic() - started)))
