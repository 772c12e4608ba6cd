"""Model lifecycle routes: list, detail, compare, activate, roll back, shadow (app.lifecycle
does the work; each worker's watcher follows the registry)."""

from __future__ import annotations

from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy.exc import SQLAlchemyError

from app.api.deps import (
    RuntimeDep,
)
from app.api.openapi import ERROR_RESPONSES, error_responses
from app.api.schemas import (
    ActivationOut,
    ActiveModelOut,
    ComparisonOut,
    ModelDetailOut,
    ModelOut,
    ModelsOut,
    ShadowOut,
)
from app.auth.guard import requires
from app.auth.keys import Scope
from app.errors import ModelNotFound
from app.lifecycle.compare import DEFAULT_SAMPLE, MAX_SAMPLE, MIN_SAMPLE
from app.lifecycle.registry import ACTIVE, Activation
from app.runtime import Runtime
from app.scoring.manifest import Manifest
from app.store.registry import RegisteredModel
from app.store.tables import ModelStatus

router = APIRouter(responses=ERROR_RESPONSES)
Sample = Annotated[
    int, Query(ge=MIN_SAMPLE, le=MAX_SAMPLE, description="stored customers compared")
]


def _model_out(manifest: Manifest, registered: RegisteredModel | None) -> dict[str, object]:
    """A model's summary, from its manifest and its registry row (if registered)."""
    return {
        "version": manifest.version,
        "kind": manifest.kind,
        "active": registered is not None and registered.status is ModelStatus.ACTIVE,
        "status": registered.status if registered is not None else "unregistered",
        "shadow": registered is not None and registered.shadow,
        "trained_at": manifest.trained_at,
        "registered_at": registered.created_at if registered else None,
        "activated_at": registered.activated_at if registered else None,
        "retired_at": registered.retired_at if registered else None,
        "artifact_sha256": manifest.artifact_sha256,
        "segments": len(manifest.segments),
        "silhouette": manifest.quality.silhouette,
        "davies_bouldin": manifest.quality.davies_bouldin,
    }


def _details(manifest: Manifest) -> dict[str, Any]:
    """What the detail views add to the summary: schema, k search and training data, as JSON."""
    as_json = cast(dict[str, Any], orjson.loads(manifest.model_dump_json()))
    return {
        "features": as_json["features"],
        "k_search": as_json["quality"]["k_search"],
        "training_data": as_json["training_data"],
    }


def _find_registered(runtime: Runtime, version: str) -> RegisteredModel | None:
    """The registry's row of the served version; None if it is not registered, or if the store
    does not answer (the model in memory still describes itself)."""
    try:
        return runtime.registry.get(version)
    except (ModelNotFound, SQLAlchemyError):
        return None


@router.get(
    "/v1/models",
    response_model=ModelsOut,
    tags=["models"],
    dependencies=[Depends(requires(Scope.READ))],
)
def models(runtime: RuntimeDep) -> ModelsOut:
    """Every registered model version with its status, and the one this process serves."""
    registered = runtime.store.call(runtime.registry.listed)
    return ModelsOut(
        models=[ModelOut.model_validate(_model_out(r.manifest, r)) for r in registered],
        active=next((r.version for r in registered if r.status is ModelStatus.ACTIVE), None),
        shadow=next((r.version for r in registered if r.shadow), None),
        served=runtime.models.model.version,
    )


@router.get(
    "/v1/models/active",
    response_model=ActiveModelOut,
    tags=["models"],
    dependencies=[Depends(requires(Scope.READ))],
)
def active_model(runtime: RuntimeDep) -> ActiveModelOut:
    """The model this process serves: its feature schema (names, types, ranges), segments and quality."""
    manifest = runtime.models.model.manifest
    registered = _find_registered(runtime, manifest.version)
    return ActiveModelOut.model_validate(_model_out(manifest, registered) | _details(manifest))


# literal paths before /v1/models/{version}: a 405 then names their methods in Allow (Starlette
# answers with the first route whose path matches), as the document lists them
@router.post(
    "/v1/models/rollback",
    response_model=ActivationOut,
    tags=["models"],
    responses=error_responses("model_not_found", "model_refused"),
    dependencies=[Depends(requires(Scope.ADMIN))],
)
def rollback_model(runtime: RuntimeDep) -> ActivationOut:
    """Activate the version that was active before the current one."""
    return _adopted(runtime, runtime.store.call(runtime.registry.rollback))


@router.delete(
    "/v1/models/shadow",
    response_model=ShadowOut,
    tags=["models"],
    dependencies=[Depends(requires(Scope.ADMIN))],
)
def stop_shadow(runtime: RuntimeDep) -> ShadowOut:
    """Stop shadow scoring."""
    runtime.store.call(lambda: runtime.registry.set_shadow(None))
    runtime.watcher.adopt_shadow(None)
    return ShadowOut(shadow=None)


@router.get(
    "/v1/models/{version}",
    response_model=ModelDetailOut,
    tags=["models"],
    responses=error_responses("model_not_found"),
    dependencies=[Depends(requires(Scope.READ))],
)
def model_detail(
    version: Annotated[str, Path(max_length=64)], runtime: RuntimeDep
) -> ModelDetailOut:
    """One registered version: schema, segments, quality and, if retrained, its lineage."""
    registered = runtime.store.call(lambda: runtime.registry.get(version))
    manifest = registered.manifest
    return ModelDetailOut.model_validate(
        _model_out(manifest, registered)
        | _details(manifest)
        | {
            "segment_keys": [
                {"id": s.id, "key": s.key, "name": s.name}
                for s in sorted(manifest.segments, key=lambda s: s.id)
            ],
            "lineage": manifest.lineage.model_dump(mode="json") if manifest.lineage else None,
        }
    )


@router.get(
    "/v1/models/{version}/comparison",
    response_model=ComparisonOut,
    tags=["models"],
    responses=error_responses("model_not_found", "model_refused", "busy"),
    dependencies=[Depends(requires(Scope.READ))],
)
def model_comparison(
    version: Annotated[str, Path(max_length=64)],
    runtime: RuntimeDep,
    sample: Sample = DEFAULT_SAMPLE,
) -> ComparisonOut:
    """What activating `version` would do to the stored customers: moves, agreement, profiles
    (against the registry's active version, as the activation gate compares)."""

    def work() -> dict[str, Any]:
        registry = runtime.registry
        old, new = registry.resolve(ACTIVE), registry.resolve(version)
        return registry.compare(old, new, sample=sample).as_json()

    return ComparisonOut.model_validate(runtime.store.call(work))


@router.post(
    "/v1/models/{version}/activate",
    response_model=ActivationOut,
    tags=["models"],
    responses=error_responses("model_not_found", "model_refused", "busy"),
    dependencies=[Depends(requires(Scope.ADMIN))],
)
def activate_model(
    version: Annotated[str, Path(max_length=64)],
    runtime: RuntimeDep,
    allow_schema_change: bool = False,
    min_agreement: Annotated[
        float | None,
        Query(ge=0, le=1, description="refuse unless this share of stored customers stays put"),
    ] = None,
    sample: Sample = DEFAULT_SAMPLE,
) -> ActivationOut:
    """Verify `version` and make it active everywhere without a restart (roll back by
    activating the previous one). This process switches at once, the others within seconds;
    requests in flight finish on the model they started with."""
    activation = runtime.store.call(
        lambda: runtime.registry.activate(
            version,
            allow_schema_change=allow_schema_change,
            min_agreement=min_agreement,
            sample=sample,
        )
    )
    return _adopted(runtime, activation)


@router.post(
    "/v1/models/{version}/shadow",
    response_model=ShadowOut,
    tags=["models"],
    responses=error_responses("model_not_found", "model_refused"),
    dependencies=[Depends(requires(Scope.ADMIN))],
)
def shadow_model(version: Annotated[str, Path(max_length=64)], runtime: RuntimeDep) -> ShadowOut:
    """Score every live assignment with `version` too, after the response; agreement with the
    active model is exported as segment_shadow_assignments_total / segment_shadow_agreements_total."""
    model = runtime.store.call(lambda: runtime.registry.set_shadow(version))
    runtime.watcher.adopt_shadow(model)
    return ShadowOut(shadow=version)


def _adopted(runtime: Runtime, activation: Activation) -> ActivationOut:
    model = activation.model
    runtime.watcher.adopt(model)
    shadow = runtime.models.shadow
    if shadow is not None and shadow.version == model.version:
        runtime.watcher.adopt_shadow(None)  # activating the shadow ends its shadowing
    registered = runtime.store.call(lambda: runtime.registry.get(model.version))
    return ActivationOut(
        active=ModelOut.model_validate(_model_out(registered.manifest, registered)),
        previous=activation.previous,
        warning=activation.lineage_warning,
        moved_share=(
            activation.comparison.moved_share if activation.comparison is not None else None
        ),
    )
