"""Assigning customers to segments: validate, score, store, count; and reading what was stored.

Takes parsed JSON, returns rows, raises AppError subclasses; knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import anyio
import numpy as np
from sqlalchemy import Connection

from app.audience.consent import Purpose
from app.audience.profile import CustomerProfile, split_profiles
from app.clock import Clock
from app.errors import (
    AppError,
    BatchTooLarge,
    ConsentWithheld,
    CustomerNotFound,
    InvalidFeatures,
    Problem,
)
from app.lifecycle.holder import ModelHolder
from app.lifecycle.shadow import ShadowScorer
from app.metrics.registry import (
    ASSIGNMENTS,
    INFERENCE_DURATION,
    SUPPRESSED_ASSIGNMENTS,
    UNKNOWN_CATEGORIES,
    labelled,
)
from app.metrics.scored import count_scored
from app.scoring.model import SegmentModel
from app.scoring.validation import ValidBatch, require_customer_id
from app.service.idempotency import Idempotency, PendingRow, Render, kept_answer, write_keyed_rows
from app.service.observed import split_observed
from app.service.store import Store
from app.store.assignments import (
    MERGE,
    SMALL_BATCH,
    AssignmentBatch,
    AssignmentRow,
    IdHash,
    few_rows_write,
    store_batch,
)
from app.store.erasure import erased_among
from app.store.group_commit import GroupCommitter
from app.store.history import current_membership, customer_history
from app.store.idempotency import claim_keys, kept_answers
from app.store.loop_connection import LoopConnection
from app.store.tables import Cause


class AssignmentWriter:
    """Stores batches of assignments (history, memberships and feed events, one transaction).
    Customers with an erasure tombstone are scored but not stored, and counted."""

    def __init__(self, store: Store, id_hash: IdHash, loop: LoopConnection | None = None) -> None:
        self._store = store
        self._id_hash = id_hash  # names erased customers in tombstones (app.audience.erasure)
        # the event loop's connection, for the group committer's writes of a few rows (None:
        # they go to a thread, as every other write does)
        self._loop = loop

    def write(self, batch: AssignmentBatch, operation: str = "assign") -> None:
        with self._store.transaction(operation, writing=True) as conn:
            # the COMMIT in the statements' round trip: one round trip a write
            self.store(conn, batch, commit=True)

    def write_keyed(
        self, batch: AssignmentBatch, idempotency: Idempotency, answer: str, operation: str
    ) -> str | None:
        """Store the batch under its Idempotency-Key, with the answer it gets; None. Or, when
        the key was answered before, store nothing and return that answer (KeyReused for
        another body)."""
        with self._store.transaction(operation, writing=True) as conn:
            # the answer goes with the claim: if the write fails, both roll back
            if claim_keys(conn, [idempotency.claim(answer)], batch.assigned_at[0]):
                self.store(conn, batch)
                return None
            kept = kept_answers(conn, [idempotency.key_hash]).get(idempotency.key_hash)
        return kept_answer(kept, idempotency)

    async def write_rows(self, pending: list[PendingRow]) -> list[str | AppError | None]:
        """Single assignments committed together (the group committer's write): None for each
        stored; for one whose Idempotency-Key was answered before, that answer (or KeyReused).
        A few rows without keys are written from the event loop, the rest in a thread."""
        keyed = any(item.idempotency is not None for item in pending)
        if self._loop is None or keyed or len(pending) > SMALL_BATCH:
            return await asyncio.to_thread(self.write_rows_blocking, pending)
        batch = AssignmentBatch.of_rows([item.row for item in pending])
        with self._store.failures_as_errors("assign", writing=True):
            suppressed = await self._loop.write(
                few_rows_write(batch, self._id_hash, committing=True), rows_of=MERGE
            )
        self._count_suppressed(batch, {row[0] for row in suppressed})
        return [None] * len(pending)

    def write_rows_blocking(self, pending: list[PendingRow]) -> list[str | AppError | None]:
        """write_rows, all in the caller's thread."""
        if all(item.idempotency is None for item in pending):
            self.write(AssignmentBatch.of_rows([item.row for item in pending]))
            return [None] * len(pending)
        return write_keyed_rows(self._store, pending, self.store)

    def erased_among(self, conn: Connection, customer_ids: Sequence[str]) -> set[str]:
        """Those of the customers erased (a tombstone stands), in the caller's transaction."""
        return erased_among(conn, customer_ids, self._id_hash)

    def store(
        self,
        conn: Connection,
        batch: AssignmentBatch,
        cause: Cause = Cause.ASSIGNMENT,
        due: Mapping[str, datetime | None] | None = None,
        *,
        commit: bool = False,
    ) -> set[str]:
        """Store the batch in the caller's transaction (with the customers' due times, when
        scored from aggregates; committing it, with `commit`); returns the erased customers'
        ids."""
        suppressed = set(store_batch(conn, batch, self._id_hash, cause, due, commit=commit))
        self._count_suppressed(batch, suppressed)
        return suppressed

    @staticmethod
    def _count_suppressed(batch: AssignmentBatch, suppressed: set[str]) -> None:
        if suppressed:
            SUPPRESSED_ASSIGNMENTS.inc(sum(1 for c in batch.customer_ids if c in suppressed))


class AssignmentService:
    def __init__(
        self,
        models: ModelHolder,
        store: Store,
        writer: AssignmentWriter,
        committer: GroupCommitter[PendingRow, str | AppError | None],
        shadow: ShadowScorer,
        *,
        clock: Clock,
        max_batch: int,
        phone_region: str | None = None,
    ) -> None:
        self.models = models
        self._clock = clock
        self._store = store
        self._writer = writer
        self._committer = committer  # single assignments, committed together under load
        self._shadow = shadow
        self._max_batch = max_batch
        self._phone_region = phone_region  # for phone numbers sent without a country code

    # --- assigning -----------------------------------------------------------------------------

    async def assign_one(self, payload: Any, *, persist: bool) -> AssignmentBatch:
        """Score one request body `{"customer_id", "features", …}` and (unless `persist` is
        false) store it; returns once it is committed. The model is read once, here: the whole
        request runs on it even if the watcher swaps models meanwhile."""
        model = self.models.model
        if model.compiled is not None:
            # the compiled scorer takes microseconds: cheaper inline than a hop to a thread
            batch = self._score_single(model, payload)
        else:
            batch = await anyio.to_thread.run_sync(self._score_single, model, payload)
        if persist:
            await self._committer.submit(PendingRow(batch.row(0)))
        else:
            # Yield once before answering. Without it a request never gives the loop back, and
            # at 64 connections on one core some connections starved: p99 ~220 ms against
            # ~25 ms with it, and throughput rose ~15% (wrk, bench/post.lua, persist=false, c=64).
            await asyncio.sleep(0)
        count_assignments(batch)
        return batch

    async def assign_one_keyed(
        self, payload: Any, idempotency: Idempotency, render: Render
    ) -> tuple[str, bool]:
        """Score and store one request body sent with an Idempotency-Key: (the answer, whether
        it is a replay of the key's first answer, nothing stored)."""
        model = self.models.model
        if model.compiled is not None:
            batch = self._score_single(model, payload)
        else:
            batch = await anyio.to_thread.run_sync(self._score_single, model, payload)
        answer = render(batch)
        kept = await self._committer.submit(PendingRow(batch.row(0), idempotency, answer))
        if isinstance(kept, AppError):
            raise kept
        if kept is not None:
            return kept, True
        count_assignments(batch)
        return answer, False

    def assign_batch_keyed(
        self, payload: Any, idempotency: Idempotency, render: Render
    ) -> tuple[str, bool]:
        """assign_batch, stored, for a body sent with an Idempotency-Key: (the answer, whether
        it is a replay). Blocking: run it in a thread."""
        batch = self._scored_batch(payload)
        answer = render(batch)
        kept = self._writer.write_keyed(batch, idempotency, answer, "assign_batch")
        if kept is not None:
            return kept, True
        count_assignments(batch)
        return answer, False

    def assign_batch(self, payload: Any, *, persist: bool) -> AssignmentBatch:
        """Score a batch body `{"customers": [...]}` in order; store all of it in one
        transaction, or nothing if any row is invalid. Blocking: run it in a thread."""
        batch = self._scored_batch(payload)
        if persist:
            self._writer.write(batch, "assign_batch")
        count_assignments(batch)
        return batch

    def _scored_batch(self, payload: Any) -> AssignmentBatch:
        customers = _customers_of(payload)
        if len(customers) > self._max_batch:
            raise BatchTooLarge(len(customers), self._max_batch)
        model = self.models.model
        now = self._clock.now()
        stripped, profiles, observed = self._split(customers, "customers", now)
        valid = _validate(model, stripped, prefix="customers")
        return self._score(model, valid, profiles, observed, mode="batch", now=now)

    def _score_single(self, model: SegmentModel, payload: Any) -> AssignmentBatch:
        now = self._clock.now()
        customers, profiles, observed = self._split([payload], "", now)
        valid = _validate(model, customers, prefix="")
        return self._score(model, valid, profiles, observed, mode="single", now=now)

    def _split(
        self, customers: Sequence[Any], prefix: str, now: datetime
    ) -> tuple[Sequence[Any], list[CustomerProfile | None] | None, list[datetime | None] | None]:
        """Split off observed_at, and e-mail, phone and consent (hashed); their problems fail
        the request."""
        customers, observed, problems = split_observed(customers, prefix, now)
        stripped, profiles, found = split_profiles(customers, prefix, self._phone_region)
        problems.extend(found)
        if problems:
            what = (
                f"{_bad_rows(problems)} of the batch's {len(customers)} customers have invalid data"
                if prefix
                else "The customer's data is invalid"
            )
            raise _invalid(what, problems)
        return stripped, profiles, observed

    def _score(
        self,
        model: SegmentModel,
        valid: ValidBatch,
        profiles: list[CustomerProfile | None] | None,
        observed: list[datetime | None] | None,
        *,
        mode: str,
        now: datetime,
    ) -> AssignmentBatch:
        batch = score(
            model, valid, profiles, mode=mode, now=now, shadow=self._shadow, observed=observed
        )
        count_scored(model, valid)  # drift of every scored customer, stored or not
        return batch

    # --- reading -------------------------------------------------------------------------------

    def current(
        self, customer_id: str, purpose: Purpose = Purpose.PERSONALIZATION
    ) -> AssignmentRow:
        """The customer's current segment, if their consent puts them in `purpose`'s audiences."""
        customer_id = require_customer_id(customer_id)
        with self._store.transaction("lookup") as conn:
            membership = current_membership(conn, customer_id)
        if membership is None:
            raise CustomerNotFound(customer_id)
        if purpose not in membership.purposes:
            if purpose is Purpose.ADVERTISING:
                # the same answer as for an unknown id: an ad platform's key must not learn
                # that a customer exists, nor that they refused advertising
                raise CustomerNotFound(customer_id)
            profile = membership.assignment.profile
            consent = profile.consent_for(purpose) if profile is not None else None
            raise ConsentWithheld(customer_id, purpose, consent)
        return membership.assignment

    def history(self, customer_id: str, limit: int) -> list[AssignmentRow]:
        customer_id = require_customer_id(customer_id)
        with self._store.transaction("lookup") as conn:
            rows = customer_history(conn, customer_id, limit)
        if not rows:
            raise CustomerNotFound(customer_id)
        return rows


def score(
    model: SegmentModel,
    valid: ValidBatch,
    profiles: Sequence[CustomerProfile | None] | None,
    *,
    mode: str,
    now: datetime,
    shadow: ShadowScorer,
    observed: Sequence[datetime | None] | None = None,
) -> AssignmentBatch:
    """The validated customers' assignments by `model` at `now`, or at the time each one's data
    describes (`observed`, app.service.observed), offered to the shadow too."""
    started = time.perf_counter()
    scores = model.score_arrays(valid.numeric, valid.categorical)
    labelled(INFERENCE_DURATION, mode).observe(time.perf_counter() - started)
    for feature, unknown in model.unknown_categories(valid.categorical).items():
        UNKNOWN_CATEGORIES.labels(model.version, feature).inc(unknown)
    rows = len(valid.customer_ids)
    clusters = scores.clusters.tolist()
    keys = [model.segment_keys_by_cluster[c] for c in clusters]
    shadow.offer(valid, model, keys)
    return AssignmentBatch(
        customer_ids=valid.customer_ids,
        segment_ids=[model.segment_ids_by_cluster[c] for c in clusters],
        segment_keys=keys,
        model_versions=[model.version] * rows,
        distances=np.round(scores.distances, 6).tolist(),
        confidences=np.round(scores.confidences, 6).tolist(),
        features=valid.features,
        assigned_at=[now] * rows if observed is None else [o or now for o in observed],
        profiles=profiles,
    )


def count_assignments(batch: AssignmentBatch) -> None:
    """Count assignments per segment once they are final (stored, or scored only)."""
    for (version, key), number in Counter(
        zip(batch.model_versions, batch.segment_keys, strict=True)
    ).items():
        labelled(ASSIGNMENTS, version, key).inc(number)


def _validate(model: SegmentModel, customers: Sequence[Any], *, prefix: str) -> ValidBatch:
    valid, problems = model.validator.customers(customers, prefix)
    if problems or valid is None:
        what = (
            f"{_bad_rows(problems)} of the batch's {len(customers)} customers are invalid"
            if prefix
            else "The customer's features are invalid"
        )
        raise _invalid(what, problems)
    return valid


def _bad_rows(problems: list[Problem]) -> str:
    """How many rows the problems name (customers[3].features… -> customers[3]); "or more"
    when some problems were only counted, not kept (app.errors.Problems)."""
    rows = len({p.loc.split("]")[0] for p in problems})
    return f"{rows} or more" if getattr(problems, "unlisted", 0) else str(rows)


def _invalid(what: str, problems: list[Problem]) -> InvalidFeatures:
    return InvalidFeatures(
        f"{what}; nothing was stored. Fix the fields listed in details and resend.", problems
    )


def _customers_of(payload: Any) -> list[Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("customers"), list):
        raise InvalidFeatures(
            "The body must be an object with a list of customers; see POST /v1/assignments/batch in /docs.",
            [Problem("customers", "is required: a list of {customer_id, features} objects")],
        )
    extra = [key for key in payload if key != "customers"]
    if extra:
        raise InvalidFeatures(
            "The body has fields other than customers; remove them and resend.",
            [Problem(key, "is not a field of a batch") for key in extra],
        )
    if not payload["customers"]:
        raise InvalidFeatures(
            "The batch is empty; send at least one customer.", [Problem("customers", "is empty")]
        )
    return list(payload["customers"])
