"""`segments rescore`: run (or resume) by hand what the service's refreshers do in the
background: re-score the customers whose segment time has changed, and, after a model switch,
every customer another version segmented. Also the store-side setup `segments ingest` shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.cli.common import (
    database,
    engine_of,
    err,
    errors_as_messages,
    fail,
    load_settings,
    progress_bar,
)

if TYPE_CHECKING:
    from app.scoring.model import SegmentModel
    from app.service.refresher import Refresher
    from app.service.store import Store
    from app.store.assignments import IdHash


@dataclass(frozen=True)
class LiveStore:
    """The store as the service uses it, from a command: the active model and a refresher."""

    store: Store
    model: SegmentModel
    id_hash: IdHash
    refresher: Refresher


@contextmanager
def live_store(command: str) -> Iterator[LiveStore]:
    """The database (DATABASE_URL's or the embedded one), migrated and with its erasure key, the
    model the service serves (the registry's active one; on a registry with none, the configured
    model is registered and activated first, as `segments serve` does) and a refresher on it."""
    from app.audience.erasure import IdHasher
    from app.clock import SystemClock
    from app.lifecycle.holder import ModelHolder
    from app.lifecycle.registry import ModelRegistry
    from app.lifecycle.shadow import ShadowScorer
    from app.scoring.model import SegmentModel
    from app.service.assignments import AssignmentWriter
    from app.service.refresher import Refresher
    from app.service.store import Store
    from app.store.embedded import embedded_erasure_key

    configured = load_settings()
    with errors_as_messages(), database(configured) as settings, engine_of(settings) as engine:
        key = settings.erasure_key.get_secret_value()
        if not key and configured.database_url is None:
            key = embedded_erasure_key(settings.embedded_dir)
        if not key:
            fail(
                [
                    f"SEGMENTS_ERASURE_KEY is not set: {command} checks erasure tombstones with "
                    "the key the service uses; set the same one"
                ]
            )
        store = Store(engine)
        if (problem := store.readiness()) is not None:
            fail([problem])
        configured_model = SegmentModel.load(settings.model_dir)
        model = store.call(
            lambda: ModelRegistry(engine).bootstrap(
                configured_model, activate=settings.model_activate_on_start
            )
        )
        id_hash = IdHasher(key)
        models = ModelHolder(model)
        refresher = Refresher(
            models,
            store,
            AssignmentWriter(store, id_hash),
            ShadowScorer(models),
            SystemClock(),
            every_seconds=settings.refresh_seconds,
            chunk=max(settings.refresh_chunk, 5_000),
        )
        yield LiveStore(store, model, id_hash, refresher)


def rescore() -> None:
    """Re-score now, with the registry's active model, every customer whose segment time has
    changed and every customer another model version segmented (after `segments models
    activate`); what each worker's refresher does in the background, resumable at any point."""
    from app.store.rescoring import memberships_behind

    with live_store("rescore") as live:
        with live.store.transaction("refresh") as conn:
            behind = memberships_behind(conn, live.model.version)
        with progress_bar(f"re-scoring with {live.model.version}") as progress:
            task = progress.add_task("rescore", total=behind or None)
            done = 0
            while chunk := live.refresher.refresh_chunk():
                done += chunk
            done += live.refresher.rescore_behind()
            progress.update(task, completed=behind)
        left = live.refresher.progress
        err.print(
            f"re-scored {done:,} customers with {live.model.version}"
            + (
                f"; {left.unscorable:,} keep the segment an earlier model gave them: their last "
                "features are not ones this model takes (send them again, or events)"
                if left is not None and left.unscorable
                else ""
            )
        )
