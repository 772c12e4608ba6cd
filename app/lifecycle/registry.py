"""The model registry: versions in the database, verified before they are activated.

The database is the source of truth for which version is active (and which is the shadow);
every worker of every replica polls it (`app.lifecycle.watcher`) and converges within seconds.
Activation verifies the artifact the way every worker will load it (sha256, skops trusted
types, the manifest against the pipeline, the parity sample) before anything changes, so a bad
version is refused with the reason and the current one keeps serving.

Each operation here is the one implementation behind both doors: the HTTP routes
(app/api/lifecycle.py) and `segments models …` (app/cli/models.py) parse, call and render.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import orjson
import pandas as pd
from sqlalchemy import Engine

from app.clock import Clock, SystemClock
from app.errors import Busy, ModelNotFound, ModelRefused
from app.lifecycle.compare import DEFAULT_SAMPLE, Comparison, compare, stored_features
from app.scoring.artifact import Artifact, ArtifactError, verify_artifact
from app.scoring.manifest import Manifest
from app.scoring.model import SegmentModel
from app.scoring.offline import OfflineInputError
from app.store import registry as store
from app.store.registry import RegisteredModel, ServedVersions

log = logging.getLogger(__name__)

ACTIVE, SHADOW = "active", "shadow"  # model references naming the registry's current choice


def model_folder(reference: str) -> SegmentModel | None:
    """The model of the folder `reference` names, if it names a folder on this machine."""
    path = Path(reference)
    return SegmentModel.load(path) if path.is_dir() else None


class AgreementTooLow(ModelRefused):
    """The activation gate said no: too few stored customers would keep their segment."""

    def __init__(self, comparison: Comparison, min_agreement: float) -> None:
        super().__init__(
            f"Not activated: only {comparison.agreement:.1%} of {comparison.customers} stored "
            f"customers would keep their segment under {comparison.new_version}, below the "
            f"{min_agreement:.1%} asked; see GET /v1/models/{comparison.new_version}/comparison "
            f"or `segments models compare active {comparison.new_version}`.",
            f"agreement {comparison.agreement:.4f} < {min_agreement}",
            loc="min_agreement",
        )
        self.comparison = comparison


@dataclass(frozen=True)
class Activation:
    model: SegmentModel  # the verified, loaded version now active
    previous: str | None  # the version it replaced (None if it was active already, or none was)
    comparison: Comparison | None = None  # what the gate (or the lineage check) measured
    # said when the new model was not retrained from the one it replaces (no --previous): its
    # segments are its own, so stored customers' segments change; None when it was
    lineage_warning: str | None = None


class ModelRegistry:
    def __init__(
        self,
        engine: Engine,
        clock: Clock | None = None,
        *,
        comparisons: int = 2,
        comparison_queue_seconds: float = 10,
    ) -> None:
        self.engine = engine
        self._clock = clock or SystemClock()
        # a comparison reads and scores up to MAX_SAMPLE stored customers: a few at once, not
        # as many as clients send (six at once ran the database into its statement timeout)
        self._comparisons = comparisons
        self._comparing = threading.BoundedSemaphore(comparisons)
        self._comparison_queue_seconds = comparison_queue_seconds  # then refused: 503 busy

    def register(self, artifact: Artifact) -> RegisteredModel:
        """Add a verified artifact as a candidate; registering the same artifact again, or the
        same model fitted again (a manifest that differs only in training time), is a no-op."""
        manifest = artifact.manifest
        with self.engine.begin() as conn:
            store.lock(conn)
            existing = store.find(conn, manifest.version)
            if existing is None:
                store.insert(
                    conn,
                    version=manifest.version,
                    kind=manifest.kind,
                    sha256=artifact.sha256,
                    manifest=orjson.loads(manifest.model_dump_json()),
                    artifact=artifact.blob,
                    source=artifact.source,
                    now=self._clock.now(),
                )
                existing = store.find(conn, manifest.version)
                assert existing is not None
                log.info("registered model %s from %s", manifest.version, artifact.source)
            elif existing.artifact_sha256 != artifact.sha256 and not _same_fit(
                existing.manifest, artifact
            ):
                raise ModelRefused(
                    f"Version {manifest.version} is registered already with another artifact; "
                    "train it again under another --version, or without --version (automatic "
                    "versions name the data and options they were fitted from).",
                    f"registered with sha256 {existing.artifact_sha256[:12]}…, "
                    f"this one is {artifact.sha256[:12]}…",
                )
        return existing

    def listed(self) -> list[RegisteredModel]:
        with self.engine.connect() as conn:
            return store.listed(conn)

    def get(self, version: str) -> RegisteredModel:
        with self.engine.connect() as conn:
            found = store.find(conn, version)
        if found is None:
            raise ModelNotFound(version)
        return found

    def served(self) -> ServedVersions:
        with self.engine.connect() as conn:
            return store.served(conn)

    def load(self, version: str) -> SegmentModel:
        """Load and verify a registered version from the database (raises ArtifactError)."""
        with self.engine.connect() as conn:
            stored = store.artifact_of(conn, version)
        if stored is None:
            raise ModelNotFound(version)
        manifest, blob = stored
        return SegmentModel(verify_artifact(f"registry:{version}", manifest, blob))

    def resolve(self, reference: str, *, folders: bool = False) -> SegmentModel:
        """The model a reference names: a registered version, `active` or `shadow` (the
        registry's), or with `folders` (the CLI, never HTTP) a model folder on this machine."""
        if folders and (local := model_folder(reference)) is not None:
            return local
        if reference in {ACTIVE, SHADOW}:
            served = self.served()
            pair = served.active if reference == ACTIVE else served.shadow
            if pair is None:
                raise ModelRefused(
                    f"The registry has no {reference} model.", f"no {reference} version", "model"
                )
            reference = pair[0]
        return self._verified(reference)

    def compare(
        self,
        old: SegmentModel,
        new: SegmentModel,
        *,
        sample: int = DEFAULT_SAMPLE,
        features: pd.DataFrame | None = None,
    ) -> Comparison:
        """What moving from `old` to `new` does to real customers: the stored ones (up to
        `sample`), or the rows of `features`."""
        if not self._comparing.acquire(timeout=self._comparison_queue_seconds):
            raise Busy("model comparisons", self._comparisons, "SEGMENTS_COMPARISONS_PER_WORKER")
        try:
            skipped = 0
            if features is None:
                features, skipped = stored_features(self.engine, [old, new], sample)
            return compare(old, new, features, skipped)
        except OfflineInputError as exc:
            raise ModelRefused(
                f"Cannot compare {old.version} with {new.version}: {exc}.", str(exc), "customers"
            ) from exc
        finally:
            self._comparing.release()

    def activate(
        self,
        version: str,
        *,
        allow_schema_change: bool = False,
        min_agreement: float | None = None,
        sample: int = DEFAULT_SAMPLE,
        check_lineage: bool = True,
    ) -> Activation:
        """Verify `version` and make it the active one; every process switches within seconds.

        With `min_agreement`, refuse (AgreementTooLow) unless at least that share of the stored
        customers keeps its segment key, compared with the registry's active version."""
        model = self._verified(version)
        comparison = None
        if min_agreement is not None:
            comparison = self.compare(self.resolve(ACTIVE), model, sample=sample)
            if comparison.agreement < min_agreement:
                raise AgreementTooLow(comparison, min_agreement)
        warning = None
        if check_lineage:
            warning, comparison = self._lineage_warning(model, comparison, sample)
        with self.engine.begin() as conn:
            store.lock(conn)
            served = store.served(conn)
            if comparison is not None and (served.active or ("",))[0] != comparison.old_version:
                # another activation landed while the gate compared: its verdict is stale
                raise ModelRefused(
                    f"Not activated: the active version changed while {version} was compared "
                    f"with {comparison.old_version}; compare and activate again.",
                    "the active version changed during the comparison",
                    loc="min_agreement",
                )
            if served.active is not None and served.active[0] != version:
                active = store.find(conn, served.active[0])
                assert active is not None
                if not allow_schema_change:
                    _check_same_schema(active.manifest, model.manifest)
            previous = store.make_active(conn, version, self._clock.now())
        if previous is not None:
            log.info("activated model %s (was %s)", version, previous)
        return Activation(model, previous, comparison, warning)

    def _lineage_warning(
        self, model: SegmentModel, comparison: Comparison | None, sample: int
    ) -> tuple[str | None, Comparison | None]:
        """Why activating `model` moves customers more than a retraining would: it does not
        descend from the active version (trained without --previous). With the share of stored
        customers whose segment would change, measured as the comparison does."""
        with self.engine.connect() as conn:
            served = store.served(conn)
        if served.active is None or served.active[0] == model.version:
            return None, comparison
        active = served.active[0]
        lineage = model.manifest.lineage
        if lineage is not None and lineage.previous_version == active:
            return None, comparison
        if comparison is None:
            try:
                comparison = self.compare(self.load(active), model, sample=sample)
            except (ModelRefused, ArtifactError):
                comparison = None  # nobody stored yet, or the active artifact is unreadable
        share = (
            f"{comparison.moved_share:.1%} of {comparison.customers:,} stored customers sampled "
            "would change segment"
            if comparison is not None
            else "the share of customers that would change segment is unknown (none stored)"
        )
        warning = (
            f"{model.version} was not retrained from the active {active} (no --previous): its "
            f"segment keys and names are its own; {share}. Every stored customer is re-scored "
            "with it in the background."
        )
        return warning, comparison

    def rollback(self) -> Activation:
        """Activate the version retired most recently."""
        with self.engine.connect() as conn:
            previous = store.last_retired(conn)
        if previous is None:
            raise ModelRefused(
                "There is no retired version to roll back to.",
                "no version has been active before the current one",
            )
        # an emergency: no comparison first (the stored customers are re-scored all the same)
        return self.activate(previous, allow_schema_change=True, check_lineage=False)

    def set_shadow(self, version: str | None) -> SegmentModel | None:
        """Score live traffic with `version` too (None: stop); it must take the same features."""
        model = self._verified(version) if version is not None else None
        with self.engine.begin() as conn:
            store.lock(conn)
            served = store.served(conn)
            if model is not None:
                if served.active is not None and served.active[0] == version:
                    raise ModelRefused(
                        f"Version {version} is the active model; shadow a candidate instead.",
                        "is active",
                    )
                if served.active is not None:
                    active = store.find(conn, served.active[0])
                    assert active is not None
                    _check_same_schema(active.manifest, model.manifest)
            store.make_shadow(conn, version)
        return model

    def bootstrap(self, configured: SegmentModel, *, activate: bool) -> SegmentModel:
        """Register the model the process was started with and return the one to serve.

        The registry's active version wins, so replicas started with different files still
        serve one model; the configured model is activated only when none is active yet, or when
        the operator asked for it explicitly (`segments serve --model DIR`).
        """
        self.register(configured.artifact)
        served = self.served()
        if served.active is None or (activate and served.active[0] != configured.version):
            with self.engine.begin() as conn:
                store.lock(conn)
                store.make_active(conn, configured.version, self._clock.now())
            return configured
        if served.active[0] == configured.version:
            return configured
        log.info(
            "the registry's active model is %s: serving it rather than the configured %s",
            served.active[0],
            configured.version,
        )
        return self.load(served.active[0])

    def known_segment_names(self) -> dict[str, dict[str, str]]:
        """Version -> segment key -> name, for every registered version."""
        return {
            registered.version: {s.key: s.name for s in registered.manifest.segments}
            for registered in self.listed()
        }

    def _verified(self, version: str) -> SegmentModel:
        self.get(version)  # 404 before trying to load
        try:
            return self.load(version)
        except ArtifactError as exc:
            raise ModelRefused(
                f"Version {version} cannot be loaded: {exc}", "failed verification at load"
            ) from exc


def _same_fit(registered: Manifest, candidate: Artifact) -> bool:
    """Whether a (verified) artifact is the registered model fitted again from the same data and
    options: skops files differ run to run (they record object ids), but the manifests then agree
    on everything the fit decides (segments, profiles, k scores, drift baseline, parity sample)."""
    if candidate.sha256 != candidate.manifest.artifact_sha256:
        return False  # not an artifact verification passed
    per_run = {"trained_at", "artifact_sha256"}
    return registered.model_dump(exclude=per_run) == candidate.manifest.model_dump(exclude=per_run)


def _check_same_schema(active: Manifest, candidate: Manifest) -> None:
    """Clients send the active model's features: a version wanting others would reject them."""
    have, want = active.feature_types(), candidate.feature_types()
    if have != want:
        raise ModelRefused(
            f"Version {candidate.version} takes different features from the active "
            f"{active.version}, so clients' requests would fail; pass allow_schema_change "
            "once clients send the new features.",
            f"features {sorted(want.items())} instead of {sorted(have.items())}",
            loc="features",
        )
