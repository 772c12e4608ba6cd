"""Group commit: concurrent single requests written together, each answered once committed.

One writer drains the queue: when it is idle an item is written at once (no added latency at low
load); while it is writing, new items wait and go together in the next transaction, up to
`max_rows`. So under load one commit carries many requests, and "200" still means "stored".
A failed write fails exactly the requests whose items it carried. Used for single assignments
(items: assignment rows) and single purchase events (items: the events of one request, each
answered with what its commit made of them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommitter(Generic[Item, Result]):
    def __init__(
        self,
        write: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        max_rows: int,
        max_wait_seconds: float,
        *,
        on_commit: Callable[[int], None] = lambda rows: None,
    ) -> None:
        # writes the items in one transaction: one result per item (a blocking write: in_thread)
        self._write = write
        self._max_rows = max_rows
        self._max_wait = max_wait_seconds
        self._on_commit = on_commit  # told each committed group's size (for a metric)
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def submit(self, item: Item) -> Result:
        """Queue the item; return its result once committed, or raise what the write raised."""
        if self._task is None or self._closing:
            raise RuntimeError("the group committer is not running")
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        self._wakeup.set()
        # shielded: a client that disconnects does not cancel a write others share
        return await asyncio.shield(done)

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if self._max_wait > 0 and len(self._pending) < self._max_rows and not self._closing:
                await asyncio.sleep(self._max_wait)
            taken, self._pending = self._pending[: self._max_rows], self._pending[self._max_rows :]
            if not self._pending:
                self._wakeup.clear()
            if taken:
                await self._commit(taken)
            elif self._closing:
                return

    async def _commit(self, taken: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._write([item for item, _ in taken])
        except Exception as exc:
            for _, done in taken:
                if not done.done():
                    done.set_exception(exc)
        else:
            self._on_commit(len(taken))
            for (_, done), result in zip(taken, results, strict=True):
                if not done.done():
                    done.set_result(result)


def in_thread(
    write: Callable[[list[Item]], Sequence[Result]],
) -> Callable[[list[Item]], Awaitable[Sequence[Result]]]:
    """A blocking write, for a GroupCommitter: run in a thread, the event loop going on."""

    async def threaded(items: list[Item]) -> Sequence[Result]:
        return await asyncio.to_thread(write, items)

    return threaded
