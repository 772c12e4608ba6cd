"""Erasure notices leave the feeds on time, whether or not another erasure comes.

An erasure's `exited` notices (cause `erasure`) name the erased id, so they may live only
`erasure_notice_days`. Each erasure prunes the expired ones, but a quiet month has no erasure:
every worker also prunes on a timer. The DELETE is idempotent and reads a partial index of the
notices alone, so many workers and replicas doing it cost nothing worth coordinating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.store.erasure import prune_erasure_notices

log = logging.getLogger(__name__)


class NoticePruner:
    def __init__(self, engine: Engine, notice_days: int, every_seconds: float) -> None:
        self.engine = engine
        self.notice_days = notice_days
        self.every_seconds = every_seconds
        self._task: asyncio.Task[None] | None = None

    def prune(self) -> int:
        """Delete the notices past their window now; how many went."""
        with self.engine.begin() as conn:
            return prune_erasure_notices(conn, datetime.now(UTC), self.notice_days)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="notice-pruner")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                pruned = await asyncio.to_thread(self.prune)
            except SQLAlchemyError as exc:
                # notices naming erased ids outlive their window while this fails: say so once
                # (not every round), and again when it works
                if not failing:
                    log.warning("cannot prune expired erasure notices, retrying: %s", exc)
                failing = True
            except Exception:  # the timer must outlive any one bad round
                log.exception("pruning erasure notices failed")
            else:
                if failing:
                    log.warning("pruning erasure notices works again")
                failing = False
                if pruned:
                    log.info("deleted %d expired erasure notices", pruned)
            await asyncio.sleep(self.every_seconds)
