"""A round of blocking store work run every few seconds in the background, for the lifespan.

Rounds run in a thread, start every `every_seconds` (a long round shortens the wait after it)
and outlive any one failure: a store that is away is said once when it starts failing and once
when it works again, not every round; anything else is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from app.errors import StoreFailed

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, work: Callable[[], int], every_seconds: float, what: str) -> None:
        self.name = name
        self._work = work  # returns how many things it did (logged when any)
        self.every_seconds = every_seconds
        self._what = what  # "re-scoring due customers": what the log lines say it does
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

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
                done = await asyncio.to_thread(self._work)
            except (SQLAlchemyError, StoreFailed) as exc:
                if not failing:
                    log.warning("%s: the store fails, retrying: %s", self._what, exc)
                failing = True
            except Exception:  # the timer must outlive any one bad round
                log.exception("%s failed", self._what)
            else:
                if failing:
                    log.warning("%s works again", self._what)
                failing = False
                if done:
                    log.info("%s: %d done", self._what, done)
            await asyncio.sleep(max(0.0, self.every_seconds - (time.monotonic() - started)))
