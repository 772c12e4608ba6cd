"""Each worker follows the registry: polls which version is active (and shadow), loads it,
verifies and warms it up off the event loop, then swaps it in with one assignment.

A request reads the holder's model once and finishes on that model, so requests in flight are
never split between versions and none fails during a switch. A version that fails to load
here (say a library this image lacks) leaves the current model serving; the failure is logged,
counted (`segment_model_loads_total{outcome="failed"}`) and shown by /readyz, and retried
after `retry_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from app.errors import AppError
from app.lifecycle.holder import ModelHolder
from app.lifecycle.registry import ModelRegistry
from app.metrics.registry import ASSIGNMENTS, MODEL_LOADS
from app.metrics.scored import publish_baseline
from app.scoring.artifact import ArtifactError
from app.scoring.model import SegmentModel
from app.store.registry import ServedVersions

log = logging.getLogger(__name__)


class ModelWatcher:
    def __init__(
        self,
        registry: ModelRegistry,
        models: ModelHolder,
        *,
        poll_seconds: float,
        retry_seconds: float = 60.0,
    ) -> None:
        self.registry = registry
        self.models = models
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self.registry_active: str | None = None  # what the registry said at the last poll
        self.load_error: str | None = None  # why the last load failed, while it stands
        self._failed: dict[tuple[str, str], float] = {}  # (version, sha256) -> retry after
        # Bumped by every swap. An activation request swaps in a thread while a poll may be
        # between reading the registry and acting on it; the poll then acts on a stale answer
        # and would put the old model back, so it acts only if no swap happened since it read.
        self._generation = 0
        self._swap = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="model-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def adopt(self, model: SegmentModel, *, read_at: int | None = None) -> bool:
        """Serve `model` from now on (already verified): requests started before keep theirs.
        A poll passes the generation it read the registry at; False if that was stale."""
        with self._swap:
            if read_at is not None and read_at != self._generation:
                return False
            previous = self.models.model
            if previous is model:
                return True
            for segment in model.manifest.segments:
                ASSIGNMENTS.labels(model.version, segment.key)  # every series from zero
            publish_baseline(model)
            self.models.serve(model)
            self.registry_active = model.version
            self.load_error = None
            self._generation += 1
        log.info("now serving model %s (was %s)", model.version, previous.version)
        return True

    def adopt_shadow(self, model: SegmentModel | None, *, read_at: int | None = None) -> None:
        with self._swap:
            if read_at is not None and read_at != self._generation:
                return
            self.models.shadow_with(model)
            self._generation += 1
        log.info("shadow model: %s", model.version if model is not None else "none")

    async def check(self) -> None:
        """One poll: converge on what the registry says (the loop calls it; tests may too)."""
        read_at = self._generation
        try:
            served = await asyncio.to_thread(self.registry.served)
        except SQLAlchemyError as exc:
            log.debug("registry not readable, keeping the current models: %s", exc)
            return
        if read_at == self._generation:  # else a swap since the read: the next poll converges
            await self._follow(served, read_at)

    async def _follow(self, served: ServedVersions, read_at: int) -> None:
        if served.active is not None:
            self.registry_active = served.active[0]
            current = self.models.model
            if served.active != (current.version, current.artifact.sha256):
                model = await self._load(*served.active)
                if model is not None:
                    if not self.adopt(model, read_at=read_at):
                        return
                    read_at = self._generation
        shadow = self.models.shadow
        if served.shadow is None:
            if shadow is not None:
                self.adopt_shadow(None, read_at=read_at)
        elif shadow is None or served.shadow != (shadow.version, shadow.artifact.sha256):
            model = await self._load(*served.shadow)
            if model is not None:
                self.adopt_shadow(model, read_at=read_at)

    async def _load(self, version: str, sha256: str) -> SegmentModel | None:
        retry_after = self._failed.get((version, sha256))
        if retry_after is not None and time.monotonic() < retry_after:
            return None
        try:
            model = await asyncio.to_thread(self._load_and_warm, version)
        except (ArtifactError, AppError, SQLAlchemyError) as exc:
            self._failed[version, sha256] = time.monotonic() + self.retry_seconds
            self.load_error = (
                f"model {version} failed to load, the current one keeps serving: {exc}"
            )
            MODEL_LOADS.labels(version, "failed").inc()
            log.error("%s", self.load_error)
            return None
        self._failed.pop((version, sha256), None)
        MODEL_LOADS.labels(version, "ok").inc()
        return model

    def _load_and_warm(self, version: str) -> SegmentModel:
        model = self.registry.load(version)  # verifies: sha256, trusted types, parity sample
        warm_up(model)
        return model

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.check()
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("model watcher poll failed")


def warm_up(model: SegmentModel) -> None:
    """Run the request path once per parity row, so the first live request pays no first-call costs."""
    rows = model.manifest.parity_sample.rows
    payloads = [{"customer_id": f"warm-up-{i}", "features": row} for i, row in enumerate(rows)]
    for payload in payloads[:8]:
        valid, _ = model.validator.customers([payload], "")
        if valid is not None:
            model.score_arrays(valid.numeric, valid.categorical)
    valid, _ = model.validator.customers(payloads, "customers")
    if valid is not None:
        model.score_arrays(valid.numeric, valid.categorical)
