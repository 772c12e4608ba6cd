"""Keeping segments true as time passes and models change: re-scoring from the store.

A customer's segment can change with no event, because recency grows every day. Every write
from aggregates records when that next happens (app.scoring.horizon, exact for the compiled
KMeans scorer); this refresher re-scores the customers whose moment has come, in chunks, each
chunk one transaction: claim the due rows (FOR UPDATE SKIP LOCKED, so every worker and replica
runs one and they share the work without a leader), score them as of now, store their
assignments with feed events of cause `time`, record their next due time, commit. A refresher
killed mid-chunk loses nothing: its transaction rolls back and the rows are due again.

The same queue carries customers due for another reason, each with that cause on the feed:
behaviour loaded in bulk (`segments ingest`, cause assignment). After a model switch, every
membership another version made is re-segmented with the active model (cause model): from the
customer's aggregates, or, for customers known only from features sent to them, from their
latest stored features. That queue is the memberships themselves, so a crash resumes it.

Each worker's refresher wakes every SEGMENTS_REFRESH_SECONDS and works until nothing is due, so
a membership is never staler than that interval plus one round's work.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import Connection

from app.clock import Clock
from app.lifecycle.holder import ModelHolder
from app.lifecycle.shadow import ShadowScorer
from app.metrics.registry import REFRESH_DURATION, REFRESHED
from app.scoring.model import SegmentModel
from app.service.activity import follows_purchases, rescore, scorable
from app.service.assignments import AssignmentWriter, score
from app.service.periodic import Periodic
from app.service.store import Store
from app.store import registry as registry_store
from app.store.customer_locks import lock_customers
from app.store.events import Activity, claim_due, forget
from app.store.rescoring import claim_activity_behind, features_behind, memberships_behind
from app.store.tables import Cause

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RescoreProgress:
    """Where the re-score after a model switch stands (fleet-wide: read from the store)."""

    model_version: str  # the registry's active version, which every membership should carry
    behind: int  # memberships another version made: still to re-score
    unscorable: int  # of those, customers whose last features the active model cannot take

    @property
    def done(self) -> bool:
        return self.behind <= self.unscorable


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
        self.progress: RescoreProgress | None = None  # as of the end of the last round
        self._periodic = Periodic(
            "refresher", self.refresh_due, every_seconds, "re-scoring due customers"
        )

    def refresh_due(self) -> int:
        """Re-score every customer due now, chunk by chunk, and everyone a model switch left
        behind; how many."""
        total = 0
        started = time.perf_counter()
        while True:
            done = self.refresh_chunk()
            total += done
            if done < self.chunk:
                break
        total += self.rescore_behind()
        if total:
            REFRESH_DURATION.observe(time.perf_counter() - started)
        return total

    def refresh_chunk(self) -> int:
        """Re-score up to one chunk of due customers in one transaction; how many."""
        model = self._models.model
        if not follows_purchases(model):
            return 0
        now = self._clock.now()
        with self._store.transaction("refresh", writing=True) as conn:
            if not _is_active(conn, model):
                return 0
            due = claim_due(conn, now, self.chunk, model.version)
            if not due:
                return 0
            by_cause: dict[Cause, dict[str, Activity]] = {}
            for activity, cause in due:
                by_cause.setdefault(cause, {})[activity.customer_id] = activity
            suppressed: set[str] = set()
            for cause, activity_of_due in by_cause.items():
                rescored = rescore(model, activity_of_due, {}, now, self._shadow)
                suppressed |= rescored.store(conn, self._writer, cause)
                REFRESHED.labels(cause.value).inc(len(activity_of_due))
            if suppressed:  # erased meanwhile: nothing of theirs may stay
                forget(conn, sorted(suppressed))
        return len(due)

    def rescore_behind(self) -> int:
        """Re-segment with the active model every customer whose membership another version
        made (after a model switch), chunk by chunk: from their aggregates, or, for customers
        known only from features sent to them, from their latest stored features. Returns how
        many were re-scored; `progress` says what is left."""
        model = self._models.model
        total = 0
        if follows_purchases(model):
            after = ""
            while (chunk := self._rescore_activity(model, after)) is not None:
                total += chunk[0]
                after = chunk[1]
        after = ""
        unscorable = 0
        while (features := self._rescore_features(model, after)) is not None:
            total += features[0]
            unscorable += features[1]
            after = features[2]
        with self._store.transaction("refresh") as conn:
            if _is_active(conn, model):
                behind = memberships_behind(conn, model.version)
                self.progress = RescoreProgress(model.version, behind, min(unscorable, behind))
        return total

    def _rescore_activity(self, model: SegmentModel, after: str) -> tuple[int, str] | None:
        """(re-scored, last id) of one chunk of customers with aggregates; None: no more."""
        now = self._clock.now()
        with self._store.transaction("refresh", writing=True) as conn:
            if not _is_active(conn, model):
                return None
            behind = claim_activity_behind(conn, model.version, after, self.chunk)
            if not behind:
                return None
            rescored = rescore(model, {a.customer_id: a for a in behind}, {}, now, self._shadow)
            suppressed = rescored.store(conn, self._writer, Cause.MODEL)
            if suppressed:
                forget(conn, sorted(suppressed))
        REFRESHED.labels(Cause.MODEL.value).inc(len(behind))
        return len(behind), behind[-1].customer_id

    def _rescore_features(self, model: SegmentModel, after: str) -> tuple[int, int, str] | None:
        """(re-scored, unscorable, last id) of one chunk of customers known from the features
        sent to them; None: no more."""
        now = self._clock.now()
        with self._store.transaction("refresh", writing=True) as conn:
            if not _is_active(conn, model):
                return None
            with_activity = not follows_purchases(model)
            # looked for first without locks: when nobody is behind (nearly always) a round
            # takes none
            found = features_behind(
                conn, model.version, after, self.chunk, with_activity=with_activity
            )
            if not found:
                return None
            # then again holding those customers' locks (app.store.customer_locks): nobody
            # changes them while they are re-scored. One who fell behind meanwhile is not
            # locked: the next round takes them.
            locked = {customer_id for customer_id, _ in found}
            lock_customers(conn, locked)
            again = features_behind(
                conn, model.version, after, self.chunk, with_activity=with_activity
            )
            if not again:
                return None
            behind = [(c, f) for c, f in again if c in locked]
            valid = scorable(model, [{"customer_id": c, "features": f} for c, f in behind])
            scored = 0
            if valid is not None:
                batch = score(model, valid, None, mode="batch", now=now, shadow=self._shadow)
                self._writer.store(conn, batch, Cause.MODEL)
                scored = len(batch)
        REFRESHED.labels(Cause.MODEL.value).inc(scored)
        return scored, len(behind) - scored, again[-1][0]

    def start(self) -> None:
        self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()


def _is_active(conn: Connection, model: SegmentModel) -> bool:
    """Whether `model` is the registry's active version: a worker whose watcher has not yet
    swapped in a new activation must not re-score with the model it replaced."""
    active = registry_store.served(conn).active
    return active is None or active[0] == model.version
