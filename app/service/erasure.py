"""Erasing customers (GDPR Art. 17): what goes, the tombstone that keeps them out, the audit
trail, and the erasure notices that tell feed followers, which leave the feeds on time.

An erasure's `exited` notices (cause `erasure`) name the erased id, so they may live only
`erasure_notice_days`. Each erasure prunes the expired ones, but a quiet month has no erasure:
every worker also prunes on a timer (NoticePruner). The DELETE is idempotent and reads a
partial index of the notices alone, so many workers and replicas doing it cost nothing worth
coordinating.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from app.clock import Clock
from app.errors import NotErased
from app.scoring.validation import require_customer_id
from app.service.periodic import Periodic
from app.service.store import Store
from app.store.assignments import IdHash
from app.store.erasure import (
    Erasure,
    erase_customers,
    erasure_audit_rows,
    prune_erasure_notices,
    restore_customer,
)

log = logging.getLogger(__name__)


class ErasureService:
    def __init__(self, store: Store, id_hash: IdHash, *, notice_days: int, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._id_hash = id_hash  # names erased customers in tombstones (app.audience.erasure)
        self._notice_days = notice_days  # how long feeds announce an erasure

    def erase(self, customer_ids: Sequence[str], api_key: str) -> list[Erasure]:
        """Erase the customers and leave a tombstone for each (app.store.erasure.erase_customers)."""
        customer_ids = [require_customer_id(customer_id) for customer_id in customer_ids]
        with self._store.transaction("erase", writing=True) as conn:
            return erase_customers(
                conn, customer_ids, self._id_hash, api_key, self._clock.now(), self._notice_days
            )

    def restore(self, customer_id: str, api_key: str) -> None:
        """Lift the customer's tombstone: their assignments are stored again from now on."""
        customer_id = require_customer_id(customer_id)
        with self._store.transaction("erase", writing=True) as conn:
            if not restore_customer(conn, customer_id, self._id_hash, api_key, self._clock.now()):
                raise NotErased(customer_id)

    def audit(self, customer_id: str) -> list[dict[str, Any]]:
        customer_id = require_customer_id(customer_id)
        with self._store.transaction("lookup") as conn:
            return erasure_audit_rows(conn, customer_id, self._id_hash)


class NoticePruner:
    def __init__(self, store: Store, notice_days: int, every_seconds: float, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.notice_days = notice_days
        # notices naming erased ids outlive their window while this fails: the runner says so
        self._periodic = Periodic(
            "notice-pruner", self.prune, every_seconds, "deleting expired erasure notices"
        )

    def prune(self) -> int:
        """Delete the notices past their window now; how many went."""
        with self.store.engine.begin() as conn:
            return prune_erasure_notices(conn, self.clock.now(), self.notice_days)

    def start(self) -> None:
        self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()
