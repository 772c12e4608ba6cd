"""Behaviour in, segments out: purchase events update each customer's aggregates and re-score them.

One transaction per write: the new events are stored (a retried event id is acknowledged and
ignored), the customers' aggregates grow with the ones that count, their features are computed
from the aggregates as of the clock's day by the same code training uses (app.training.rfm),
the active model scores them, and the assignments, memberships and feed events are stored as
assignments are, with each customer's due time (when time alone next changes their segment:
app.service.refresher re-scores them then). The answer comes after the commit. Customers with an erasure tombstone get
nothing stored: their events of this write are deleted again in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

import anyio
from sqlalchemy import Connection

from app.audience.profile import CustomerProfile
from app.clock import Clock
from app.errors import AppError, EventsUnsupported
from app.lifecycle.holder import ModelHolder
from app.lifecycle.shadow import ShadowScorer
from app.metrics.registry import EVENTS
from app.scoring.model import SegmentModel
from app.service.activity import follows_purchases, rescore
from app.service.assignments import AssignmentWriter, count_assignments
from app.service.event_input import parse_events
from app.service.idempotency import Idempotency, kept_answer
from app.service.store import Store
from app.store.assignments import AssignmentBatch, AssignmentRow
from app.store.customer_locks import FEW, lock_customers
from app.store.events import Activity, PurchaseRow, activity_of, forget, record_events
from app.store.group_commit import GroupCommitter
from app.store.history import current_assignments
from app.store.idempotency import claim_keys, kept_answers, record_answers
from app.store.tables import Cause


@dataclass(frozen=True)
class EventBatch:
    """The events of one request, with each one's hashed identifiers and consent."""

    rows: list[PurchaseRow]
    profiles: list[CustomerProfile | None]
    # sent with an Idempotency-Key: the key, and how its answer is written (the API's JSON)
    idempotency: Idempotency | None = None
    render: Callable[[EventsOutcome], str] | None = None


@dataclass(frozen=True)
class EventsOutcome:
    model_version: str
    assignments: AssignmentBatch  # each scored customer once, in the order first named
    stored: int  # events stored now
    duplicate: int  # events stored before (retries)
    suppressed: int  # events of erased customers: acknowledged, not stored
    unscored: list[str]  # customers with no purchase that counts yet (say, only returns)


class EventWriter:
    """Writes event batches (from one request, or several committed together)."""

    def __init__(
        self,
        models: ModelHolder,
        store: Store,
        assignments: AssignmentWriter,
        shadow: ShadowScorer,
        clock: Clock,
    ) -> None:
        self._models = models
        self._store = store
        self._assignments = assignments
        self._shadow = shadow
        self._clock = clock

    def write(self, batches: list[EventBatch]) -> list[EventResult]:
        """Store the batches in one transaction; one outcome per batch (for a batch sent with an
        Idempotency-Key, its answer: the first one, with nothing stored, for a retry).

        Only customers the new events change are re-scored: those with a new purchase that
        counts, or new identifiers or consent. A retry changes nothing and stores nothing
        more: its customers are answered with the segment stored for them.
        """
        model = self._models.model
        now = self._clock.now()
        if all(batch.idempotency is None for batch in batches):
            with self._store.transaction("events", writing=True) as conn:
                outcomes, scored = self._record(conn, model, batches, now)
            self._count(outcomes, scored)
            return list(outcomes)
        # as app.service.idempotency.write_keyed_rows: the group's first batch with a key
        # claims it and is written, with its answer; the others get the answer kept
        owners: dict[str, int] = {}
        for index, batch in enumerate(batches):
            if batch.idempotency is not None:
                owners.setdefault(batch.idempotency.key_hash, index)
        with self._store.transaction("events", writing=True) as conn:
            claims = [_key(batches[index]).claim() for index in owners.values()]
            claimed = claim_keys(conn, claims, now)
            written = [
                index
                for index, batch in enumerate(batches)
                if batch.idempotency is None
                or (
                    batch.idempotency.key_hash in claimed
                    and owners[batch.idempotency.key_hash] == index
                )
            ]
            outcomes, scored = self._record(conn, model, [batches[i] for i in written], now)
            fresh = dict(zip(written, outcomes, strict=True))
            answers = {
                _key(batches[i]).key_hash: _render(batches[i], fresh[i])
                for i in written
                if batches[i].idempotency is not None
            }
            record_answers(conn, answers)
            replayed = {_key(b).key_hash for i, b in enumerate(batches) if i not in fresh}
            kept = kept_answers(conn, sorted(replayed)) if replayed else {}
        self._count(outcomes, scored)
        results: list[EventResult] = []
        for index, batch in enumerate(batches):
            if index in fresh:
                if batch.idempotency is None:
                    results.append(fresh[index])
                else:
                    results.append(KeyedAnswer(answers[batch.idempotency.key_hash], False))
                continue
            try:
                answer = kept_answer(kept.get(_key(batch).key_hash), _key(batch))
                results.append(KeyedAnswer(answer, True))
            except AppError as exc:
                results.append(exc)
        return results

    def _record(
        self, conn: Connection, model: SegmentModel, batches: list[EventBatch], now: datetime
    ) -> tuple[list[EventsOutcome], AssignmentBatch]:
        """The batches' events stored and their customers re-scored in the caller's
        transaction: each batch's outcome, and the assignments stored."""
        first = _first_of_each_id(row for batch in batches for row in batch.rows)
        rows = list(first.values())
        customers = list(dict.fromkeys(row.customer_id for row in rows))
        profiles = _profiles(batches, first)
        stored, activity = record_events(conn, rows, now)
        if len(customers) > FEW:
            # the scored and the unscored are locked below, each set on its own: when together
            # they are many, lock them all first, so that neither takes the fleet lock shared
            # and then wants it exclusively (app.store.customer_locks)
            lock_customers(conn, customers)
        changed = {
            row.customer_id
            for row in rows
            if row.event_id in stored and (row.counted or row.customer_id in profiles)
        }
        # customers changed without growing (new consent or identifiers only): read theirs
        if missing := sorted(changed - activity.keys()):
            activity |= activity_of(conn, missing)
        rescored = rescore(
            model,
            {c: a for c, a in activity.items() if c in changed},
            profiles,
            now,
            self._shadow,
        )
        scored = rescored.assignments
        suppressed = rescored.store(conn, self._assignments, Cause.ASSIGNMENT)
        # customers with new events but nothing scored (returns, no purchase yet) are
        # checked too: an erased customer's events are never kept
        unscored = {r.customer_id for r in rows if r.event_id in stored} - set(scored.customer_ids)
        if unscored:
            suppressed |= self._assignments.erased_among(conn, sorted(unscored))
        if suppressed:
            forget(conn, sorted(suppressed))
        unchanged = [c for c in customers if c not in changed]
        answers = current_assignments(conn, unchanged) if unchanged else {}
        scored = _without(scored, suppressed)
        answers |= {c: scored.row(i) for i, c in enumerate(scored.customer_ids)}
        outcomes = [
            _outcome(model, batch, first, answers, stored, suppressed, activity)
            for batch in batches
        ]
        return outcomes, scored

    @staticmethod
    def _count(outcomes: Sequence[EventsOutcome], scored: AssignmentBatch) -> None:
        """Metrics, once committed."""
        count_assignments(scored)
        for outcome in outcomes:
            EVENTS.labels("stored").inc(outcome.stored)
            EVENTS.labels("duplicate").inc(outcome.duplicate)
            EVENTS.labels("suppressed").inc(outcome.suppressed)


class KeyedAnswer(NamedTuple):
    """The answer of a batch sent with an Idempotency-Key, and whether it is a replay."""

    answer: str
    replayed: bool


# what a write gives each batch: its outcome; with a key, its answer; or the key's refusal
EventResult = EventsOutcome | KeyedAnswer | AppError


def _key(batch: EventBatch) -> Idempotency:
    assert batch.idempotency is not None  # only batches sent with a key are answered so
    return batch.idempotency


def _render(batch: EventBatch, outcome: EventsOutcome) -> str:
    assert batch.render is not None  # a batch with a key carries how its answer is written
    return batch.render(outcome)


class EventService:
    def __init__(
        self,
        models: ModelHolder,
        writer: EventWriter,
        committer: GroupCommitter[EventBatch, EventResult],
        clock: Clock,
        *,
        max_batch: int,
        phone_region: str | None = None,
    ) -> None:
        self.models = models
        self._writer = writer
        self._committer = committer  # single events, committed together under load
        self._clock = clock
        self._max_batch = max_batch
        self._phone_region = phone_region

    async def ingest(
        self,
        payload: Any,
        idempotency: Idempotency | None = None,
        render: Callable[[EventsOutcome], str] | None = None,
    ) -> EventsOutcome | KeyedAnswer:
        """Store a `{"events": [...]}` body and re-score its customers; all or nothing. With an
        Idempotency-Key, the answer `render` writes (the first one again for a retry)."""
        batch = self._parse(payload)
        if idempotency is not None:
            batch = replace(batch, idempotency=idempotency, render=render)
        if len(batch.rows) == 1:
            result = await self._committer.submit(batch)
        else:
            result = (await anyio.to_thread.run_sync(self._writer.write, [batch]))[0]
        if isinstance(result, AppError):
            raise result
        return result

    def _parse(self, payload: Any) -> EventBatch:
        model = self.models.model
        if not follows_purchases(model):
            raise EventsUnsupported(model.version)
        parsed = parse_events(
            payload,
            now=self._clock.now(),
            max_batch=self._max_batch,
            currency=model.manifest.training_data.currency,
            phone_region=self._phone_region,
        )
        return EventBatch(parsed.rows, parsed.profiles)


def _first_of_each_id(rows: Iterable[PurchaseRow]) -> dict[str, PurchaseRow]:
    """Each event id's first row: a batch (or two requests committed together) may repeat one."""
    first: dict[str, PurchaseRow] = {}
    for row in rows:
        first.setdefault(row.event_id, row)
    return first


def _profiles(
    batches: Sequence[EventBatch], first: dict[str, PurchaseRow]
) -> dict[str, CustomerProfile]:
    """Each customer's identifiers and consent from the events stored now: what the latest event
    sent wins, field by field (a flag not sent keeps the one sent before)."""
    merged: dict[str, CustomerProfile] = {}
    pairs = [
        (row, profile)
        for batch in batches
        for row, profile in zip(batch.rows, batch.profiles, strict=True)
        if profile is not None and first[row.event_id] is row
    ]
    for row, profile in sorted(pairs, key=lambda pair: pair[0].occurred_at):
        merged[row.customer_id] = profile.merged_over(merged.get(row.customer_id))
    return merged


def _without(batch: AssignmentBatch, customers: set[str]) -> AssignmentBatch:
    if not customers:
        return batch
    keep = [i for i, c in enumerate(batch.customer_ids) if c not in customers]
    return AssignmentBatch.of_rows([batch.row(i) for i in keep])


def _outcome(
    model: SegmentModel,
    batch: EventBatch,
    first: dict[str, PurchaseRow],
    answers: dict[str, AssignmentRow],
    stored: set[str],
    suppressed: set[str],
    activity: dict[str, Activity],
) -> EventsOutcome:
    customers = list(dict.fromkeys(row.customer_id for row in batch.rows))
    kept = [row for row in batch.rows if row.customer_id not in suppressed]
    new = sum(1 for row in kept if row.event_id in stored and first[row.event_id] is row)
    return EventsOutcome(
        model_version=model.version,
        assignments=AssignmentBatch.of_rows([answers[c] for c in customers if c in answers]),
        stored=new,
        duplicate=len(kept) - new,
        suppressed=len(batch.rows) - len(kept),
        unscored=[c for c in customers if c not in answers and c not in suppressed],
    )
