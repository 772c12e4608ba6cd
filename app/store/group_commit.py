"""Group commit: concurrent single assignments written together, each answered once committed.

One writer drains the queue: when it is idle a row is written at once (no added latency at low
load); while it is writing, new rows wait and go together in the next transaction, up to
`max_rows`. So under load one commit carries many requests, and "200" still means "stored".
A failed write fails exactly the requests whose rows it carried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from app.store.assignments import AssignmentBatch, AssignmentRow


class GroupCommitter:
    def __init__(
        self,
        write: Callable[[AssignmentBatch], None],
        max_rows: int,
        max_wait_seconds: float,
        *,
        on_commit: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self._write = write
        self._max_rows = max_rows
        self._max_wait = max_wait_seconds
        self._on_commit = on_commit  # told each committed group's row count (for a metric)
        self._pending: list[tuple[AssignmentRow, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def submit(self, row: AssignmentRow) -> None:
        """Queue the row and return once it is committed; raises what the write raised."""
        if self._task is None or self._closing:
            raise RuntimeError("the group committer is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, done))
        self._wakeup.set()
        # shielded: a client that disconnects does not cancel a write others share
        await asyncio.shield(done)

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

    async def _commit(self, taken: list[tuple[AssignmentRow, asyncio.Future[None]]]) -> None:
        batch = AssignmentBatch.of_rows([row for row, _ in taken])
        try:
            await asyncio.to_thread(self._write, batch)
        except Exception as exc:
            for _, done in taken:
                if not done.done():
                    done.set_exception(exc)
        else:
            self._on_commit(len(taken))
            for _, done in taken:
                if not done.done():
                    done.set_result(None)
