"""Idempotency-Key on storing requests: the same key with the same body answers the first
answer and stores nothing more; the same key with another body is a 422.

A key is the caller's (scoped by their API key's name and the route, so two callers cannot
collide or read each other's answers) and is kept in PostgreSQL (app.store.idempotency) for
SEGMENTS_IDEMPOTENCY_HOURS, claimed by the transaction that writes the request, so it holds
across workers and replicas and under concurrent duplicates. Only stored requests use keys:
scoring without storing (`?persist=false`) is repeatable as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import Connection

from app.clock import Clock
from app.errors import AppError, Problem, StoreFailed, StoreReason
from app.service.periodic import Periodic
from app.service.store import Store
from app.store.assignments import AssignmentBatch, AssignmentRow
from app.store.idempotency import (
    KeptAnswer,
    KeyClaim,
    claim_keys,
    kept_answers,
    prune_keys,
)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"  # "true" on an answer given again for a retried key
MAX_KEY = 255


@dataclass(frozen=True)
class Idempotency:
    """A request's key (hashed with its scope) and the hash of its body."""

    key_hash: str
    body_sha256: str

    def claim(self, answer: str | None = None) -> KeyClaim:
        """The key to claim, with the answer when it is known before the write."""
        return KeyClaim(self.key_hash, self.body_sha256, answer)


def idempotency_of(header: str | None, caller: str, route: str, body: bytes) -> Idempotency | None:
    """The request's Idempotency-Key (None without the header); 422 for a malformed one."""
    if header is None:
        return None
    if not 0 < len(header) <= MAX_KEY or not all(" " < c <= "~" for c in header):
        raise AppError(
            f"The {HEADER} header must be 1 to {MAX_KEY} visible ASCII characters (a UUID is "
            "usual); send one such key per logical request, the same on each retry.",
            [Problem(HEADER, f"{len(header)} characters, or characters outside ASCII 33-126")],
            422,
            "invalid_input",
        )
    scoped = hashlib.sha256(f"{caller}\0{route}\0{header}".encode()).hexdigest()
    return Idempotency(scoped, hashlib.sha256(body).hexdigest())


class KeyReused(AppError):
    def __init__(self) -> None:
        super().__init__(
            f"This {HEADER} was used before with another body; a retry must send the same "
            "body, and a new request a new key.",
            [Problem(HEADER, "already answered a request with a different body")],
            422,
            "idempotency_key_reused",
        )


def kept_answer(kept: KeptAnswer | None, idempotency: Idempotency) -> str:
    """The first answer for a key another request (or an earlier one in the same commit)
    claimed; KeyReused when its body was another."""
    if kept is None or kept.answer is None:
        # claimed, then gone before it could be read (pruned, a day later): rare, and safe
        # to retry (the retry claims the key anew)
        raise StoreFailed(StoreReason.LOCK, writing=True)
    if kept.body_sha256 != idempotency.body_sha256:
        raise KeyReused()
    return kept.answer


# renders the answer a request gets from its assignments (the API's JSON): a request with an
# Idempotency-Key keeps it with the key, for its retries
Render = Callable[[AssignmentBatch], str]


class PendingRow(NamedTuple):
    """A single assignment waiting for its group commit: with its Idempotency-Key and the
    answer it gets, when the request sent a key."""

    row: AssignmentRow
    idempotency: Idempotency | None = None
    answer: str | None = None


def _keyed(item: PendingRow) -> Idempotency:
    assert item.idempotency is not None  # only rows sent with a key are replayed
    return item.idempotency


def _answer(item: PendingRow) -> str:
    assert item.answer is not None  # a row with a key carries its answer
    return item.answer


def write_keyed_rows(
    store: Store,
    pending: Sequence[PendingRow],
    write: Callable[[Connection, AssignmentBatch], object],
) -> list[str | AppError | None]:
    """One group commit of single assignments some of which carry a key: each key claimed by
    the first of the group's requests with it, whose row is written (result None) with its
    answer; a row whose key was answered before (or by an earlier request of the group) is not
    written, and gets that answer (or KeyReused for another body)."""
    owners: dict[str, int] = {}
    for index, item in enumerate(pending):
        if item.idempotency is not None:
            owners.setdefault(item.idempotency.key_hash, index)
    now = max(item.row.assigned_at for item in pending)
    with store.transaction("assign", writing=True) as conn:
        claims = [_keyed(pending[i]).claim(_answer(pending[i])) for i in owners.values()]
        claimed = claim_keys(conn, claims, now)
        written = {
            index
            for index, item in enumerate(pending)
            if item.idempotency is None
            or (item.idempotency.key_hash in claimed and owners[item.idempotency.key_hash] == index)
        }
        if written:
            write(conn, AssignmentBatch.of_rows([pending[i].row for i in sorted(written)]))
        replayed = {_keyed(item).key_hash for i, item in enumerate(pending) if i not in written}
        kept = kept_answers(conn, sorted(replayed)) if replayed else {}
    results: list[str | AppError | None] = []
    for index, item in enumerate(pending):
        if index in written:
            results.append(None)
            continue
        try:
            results.append(kept_answer(kept.get(_keyed(item).key_hash), _keyed(item)))
        except AppError as exc:
            results.append(exc)
    return results


class KeyPruner:
    """Forgets keys older than their time, on a timer in every worker (an idempotent DELETE)."""

    def __init__(self, store: Store, hours: float, clock: Clock) -> None:
        self._store = store
        self._hours = hours
        self._clock = clock
        self._periodic = Periodic(
            "key-pruner", self.prune, PRUNE_SECONDS, "deleting expired idempotency keys"
        )

    def prune(self) -> int:
        with self._store.engine.begin() as conn:
            return prune_keys(conn, self._clock.now(), self._hours)

    def start(self) -> None:
        self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()


PRUNE_SECONDS = 600  # keys live a day by default: ten minutes over is no matter
