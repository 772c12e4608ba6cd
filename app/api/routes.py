"""The HTTP routes: thin wrappers that call the service and shape its answers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from json.encoder import encode_basestring as encode_json_string
from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from app.api.body import parse_json
from app.api.exports import FEED_CURSOR_HEADER, negotiate, stream_audience
from app.api.responses import OrjsonResponse
from app.api.schemas import (
    ActivationOut,
    ActiveModelOut,
    AssignmentOut,
    AuditTrailOut,
    BatchIn,
    BatchOut,
    ChangesOut,
    ComparisonOut,
    CustomerIn,
    ErasureIn,
    ErasuresOut,
    HistoryOut,
    MembersOut,
    ModelDetailOut,
    ModelOut,
    ModelsOut,
    SegmentOut,
    SegmentsOut,
    ShadowOut,
    request_body_schema,
)
from app.audience.consent import Purpose
from app.audience.formats import ExportFormat, Identifiers, member_fields
from app.auth.guard import purpose_for, requires
from app.auth.keys import ApiKey, Scope
from app.errors import InvalidFeatures, ModelNotFound, ModelRefused, NothingErased, error_body
from app.lifecycle.compare import Comparison, compare, stored_features
from app.lifecycle.registry import Activation
from app.metrics.registry import exposition
from app.runtime import Runtime
from app.scoring.artifact import ArtifactError
from app.scoring.model import SegmentModel
from app.scoring.offline import OfflineInputError
from app.scoring.validation import CUSTOMER_ID_PATTERN, Problem, customer_id_problem
from app.store.registry import RegisteredModel
from app.store.repository import AssignmentBatch


async def _runtime(request: Request) -> Runtime:
    # async: FastAPI would run a plain `def` dependency in the thread pool, a hop per request
    return cast(Runtime, request.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
AdminKey = Annotated[ApiKey, Depends(requires(Scope.ADMIN))]  # the key's name goes to the audit
# the consent purpose a route serves, checked against the caller's key (app.auth.guard)
AudiencePurpose = Annotated[Purpose, Depends(purpose_for(Scope.AUDIENCE))]
LookupPurpose = Annotated[Purpose, Depends(purpose_for(Scope.READ))]
CustomerIdPath = Annotated[str, Path(pattern=CUSTOMER_ID_PATTERN, max_length=128)]
# the hot routes check their key inline (no dependency injection): declared here for OpenAPI
BEARER_SECURITY: dict[str, Any] = {"security": [{"HTTPBearer": []}]}
PERSIST_PARAMETER = {
    "name": "persist",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": True},
    "description": "false: score without storing",
}


def _persist(request: Request) -> bool:
    """?persist=false (or 0/no/off) scores without storing; read by hand on the hot routes."""
    value = request.query_params.get("persist")
    if value is None or value.lower() in {"true", "1", "yes", "on"}:
        return True
    if value.lower() in {"false", "0", "no", "off"}:
        return False
    raise InvalidFeatures(
        "persist must be true or false.",
        [Problem("persist", f"got {value[:20]!r}; use true or false")],
    )


router = APIRouter()
DEFAULT_COMPARISON_SAMPLE = 20_000
MAX_COMPARISON_SAMPLE = 200_000


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a Z, e.g. 2026-11-23T09:00:00.123456Z."""
    # stored values come back in the database session's zone: always answer in UTC
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _assignments_json(batch: AssignmentBatch, names: dict[str, str]) -> list[str]:
    """Each assignment as JSON text, written directly: building 10,000 nested dicts for orjson
    cost more than scoring them. Every value is a number we made, an escaped string, or JSON
    produced by orjson, so the text is always valid JSON (tested against the response model)."""
    stamp = {moment: f'"{_timestamp(moment)}"' for moment in set(batch.assigned_at)}
    segment = {
        (segment_id, key): orjson.dumps(
            {"id": segment_id, "key": key, "name": names.get(key, key)}
        ).decode()
        for segment_id, key in set(zip(batch.segment_ids, batch.segment_keys, strict=True))
    }
    version = {v: encode_json_string(v) for v in set(batch.model_versions)}
    return [
        f'{{"customer_id":{encode_json_string(customer_id)},"segment":{segment[segment_id, key]},'
        f'"model_version":{version[model_version]},"distance":{distance!r},"confidence":{confidence!r},'
        f'"assigned_at":{stamp[moment]}}}'
        for customer_id, segment_id, key, model_version, distance, confidence, _, moment in batch.rows()
    ]


@router.post(
    "/v1/assignments",
    response_model=AssignmentOut,
    tags=["assignments"],
    openapi_extra=request_body_schema(CustomerIn, PERSIST_PARAMETER) | BEARER_SECURITY,
)
async def assign(request: Request) -> Response:
    """Assign one customer to a segment and store it (`?persist=false` only scores).

    Answers only once the assignment is committed; concurrent requests share commits.
    """
    # the hot path: no dependency injection (FastAPI's resolution costs more than our scoring)
    runtime: Runtime = request.state.runtime
    runtime.guard.authorize(request, Scope.ASSIGN)
    service = runtime.service
    persist = _persist(request)
    payload = parse_json(await request.body())
    if service.model.compiled is not None:
        # the compiled scorer takes microseconds: cheaper inline than a hop to a thread
        batch = service.score_single(payload)
    else:
        batch = await run_in_threadpool(service.score_single, payload)
    if persist:
        await service.store_one(batch)
    else:
        service.count(batch)
        # Yield once before answering. Without it a request never gives the loop back, and at
        # 64 connections on one core some connections starved: p99 ~220 ms against ~25 ms with
        # it, and throughput rose ~15% (wrk, bench/post.lua, persist=false, c=64).
        await asyncio.sleep(0)
    return Response(
        _assignments_json(batch, runtime.segment_names)[0], media_type="application/json"
    )


@router.post(
    "/v1/assignments/batch",
    response_model=BatchOut,
    tags=["assignments"],
    openapi_extra=request_body_schema(BatchIn, PERSIST_PARAMETER) | BEARER_SECURITY,
)
async def assign_batch(request: Request) -> Response:
    """Assign many customers, stored in one transaction: all of them, or none if any row is invalid."""
    runtime: Runtime = request.state.runtime
    runtime.guard.authorize(request, Scope.ASSIGN)
    persist = _persist(request)
    raw = await request.body()

    def work() -> str:
        batch = runtime.service.assign_batch(parse_json(raw), persist=persist)
        version = encode_json_string(batch.model_versions[0])
        rows = ",".join(_assignments_json(batch, runtime.segment_names))
        return '{"model_version":' + version + ',"assignments":[' + rows + "]}"

    return Response(await run_in_threadpool(work), media_type="application/json")


@router.get(
    "/v1/customers/{customer_id}/segment",
    response_model=AssignmentOut,
    tags=["customers"],
)
def current_segment(
    customer_id: CustomerIdPath, runtime: RuntimeDep, purpose: LookupPurpose
) -> Response:
    """The customer's current segment (their latest stored assignment), if their consent allows
    the purpose: 404 consent_withheld otherwise."""
    batch = AssignmentBatch.of_rows([runtime.service.current(customer_id, purpose)])
    return Response(
        _assignments_json(batch, runtime.segment_names)[0], media_type="application/json"
    )


@router.get(
    "/v1/customers/{customer_id}/assignments",
    response_model=HistoryOut,
    tags=["customers"],
    dependencies=[Depends(requires(Scope.READ))],
)
def customer_history(
    customer_id: CustomerIdPath,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The customer's stored assignments, newest first."""
    batch = AssignmentBatch.of_rows(runtime.service.history(customer_id, limit))
    rows = ",".join(_assignments_json(batch, runtime.segment_names))
    return Response('{"assignments":[' + rows + "]}", media_type="application/json")


@router.delete(
    "/v1/customers/{customer_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["customers"],
    responses={404: {"description": "nothing was stored (a tombstone is recorded all the same)"}},
)
def erase_customer(customer_id: CustomerIdPath, runtime: RuntimeDep, key: AdminKey) -> Response:
    """Erase everything stored about the customer: history, membership, hashed identifiers,
    consent and change events. A tombstone (a keyed hash of the id) then keeps their later
    assignments from being stored, and an audit row records what went and which key asked."""
    (erasure,) = runtime.service.erase([customer_id], key.name)
    if not erasure.found:
        raise NothingErased(customer_id, erasure.already_erased)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/v1/erasures",
    response_model=ErasuresOut,
    tags=["customers"],
    openapi_extra=request_body_schema(ErasureIn),
)
async def erase_customers(request: Request, runtime: RuntimeDep, key: AdminKey) -> Response:
    """Erase up to 10,000 customers in one transaction (a GDPR request queue), each as
    DELETE /v1/customers/{id} does; ids never seen are tombstoned too."""
    ids = _erasure_ids(parse_json(await request.body()))
    erasures = await run_in_threadpool(runtime.service.erase, ids, key.name)
    return _json(
        {
            "erased": sum(e.found for e in erasures),
            "tombstoned": len(erasures),
            "customers": [
                {
                    "customer_id": e.customer_id,
                    "found": e.found,
                    "already_erased": e.already_erased,
                    "assignments": e.assignments,
                    "memberships": e.memberships,
                    "events": e.events,
                }
                for e in erasures
            ],
        }
    )


MAX_ERASURES = 10_000


def _erasure_ids(payload: Any) -> list[str]:
    ids = payload.get("customer_ids") if isinstance(payload, dict) else None
    if not isinstance(ids, list) or not ids or len(payload) != 1:
        raise InvalidFeatures(
            'The body must be {"customer_ids": [...]} with 1 to 10,000 ids; nothing was erased.',
            [Problem("customer_ids", "is required: a non-empty list of customer ids")],
        )
    if len(ids) > MAX_ERASURES:
        raise InvalidFeatures(
            f"The request names {len(ids)} customers; send at most {MAX_ERASURES} per call "
            "(split it). Nothing was erased.",
            [Problem("customer_ids", f"has {len(ids)} items, more than {MAX_ERASURES}")],
        )
    problems = [
        Problem(f"customer_ids[{i}]", problem)
        for i, value in enumerate(ids)
        if (problem := customer_id_problem(value))
    ]
    if problems:
        raise InvalidFeatures(
            f"{len(problems)} of the {len(ids)} ids are invalid; nothing was erased. "
            "Fix them and resend.",
            problems,
        )
    return ids


@router.post(
    "/v1/customers/{customer_id}/restore",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["customers"],
)
def restore_customer(customer_id: CustomerIdPath, runtime: RuntimeDep, key: AdminKey) -> Response:
    """Lift the customer's erasure tombstone (e.g. they signed up again): assignments sent from
    now on are stored. Nothing erased comes back. Audited."""
    runtime.service.restore(customer_id, key.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/v1/customers/{customer_id}/erasures",
    response_model=AuditTrailOut,
    tags=["customers"],
    dependencies=[Depends(requires(Scope.ADMIN))],
)
def erasure_audit(customer_id: CustomerIdPath, runtime: RuntimeDep) -> Response:
    """The customer's erasure audit trail: each erasure and restore, what went, which key."""
    rows = runtime.service.erasure_audit(customer_id)
    return _json(
        {
            "customer_id": customer_id,
            "erased": bool(rows) and rows[-1]["action"] == "erased",
            "audit": [
                {
                    "action": r["action"],
                    "assignments": r["assignments"],
                    "memberships": r["memberships"],
                    "events": r["events"],
                    "api_key": r["api_key"],
                    "at": _timestamp(r["occurred_at"]),
                }
                for r in rows
            ],
        }
    )


@router.get(
    "/v1/segments",
    response_model=SegmentsOut,
    tags=["segments"],
    # the catalogue of audiences an ad platform may follow: no customer data in it
    dependencies=[Depends(requires(Scope.READ, also=Scope.ADVERTISING))],
)
def segments(runtime: RuntimeDep) -> SegmentsOut:
    """The active model's segments, with profiles a marketer can read."""
    manifest = runtime.model.manifest
    return SegmentsOut(
        model_version=manifest.version,
        segments=[
            SegmentOut(
                id=s.id,
                key=s.key,
                name=s.name,
                description=s.description,
                share=s.share,
                size=s.size,
                profile=s.numeric_profile,
                category_profile=s.category_profile,
            )
            for s in sorted(manifest.segments, key=lambda s: s.id)
        ],
    )


@router.get(
    "/v1/segments/{key}/members",
    response_model=MembersOut,
    tags=["segments", "audiences"],
    responses={
        200: {
            "content": {
                "application/x-ndjson": {"description": "the whole audience, one JSON per line"},
                "text/csv": {"description": "the whole audience, with a header row"},
            },
            "headers": {
                FEED_CURSOR_HEADER: {
                    "description": "streamed exports: the change-feed cursor of the export's "
                    "snapshot; follow GET /v1/changes?since= from it",
                    "schema": {"type": "string"},
                }
            },
        }
    },
)
async def segment_members(
    key: str,
    request: Request,
    runtime: RuntimeDep,
    purpose: AudiencePurpose,
    format: Annotated[
        ExportFormat | None,
        Query(
            description="json (paged), ndjson or csv (the whole audience, streamed); "
            "default: from the Accept header, else json"
        ),
    ] = None,
    identifiers: Annotated[
        Identifiers,
        Query(description="add email_sha256 and phone_sha256 in Google's or Meta's format"),
    ] = Identifiers.NONE,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> Response:
    """The purpose's audience of segment `key`: customers whose current segment it is and whose
    consent allows the purpose, in customer-id order. Paged JSON (follow `next_cursor`), or the
    whole audience streamed as NDJSON or CSV from one snapshot."""
    export_format = negotiate(format, request.headers.get("accept"))
    if export_format is not ExportFormat.JSON:
        return await stream_audience(
            runtime.service,
            key,
            purpose,
            export_format,
            identifiers,
            runtime.settings.max_exports,
        )
    page = await run_in_threadpool(runtime.service.members, key, purpose, cursor, limit)
    # a page holds up to 10,000 ids: orjson straight from the list, not a model per response
    body: dict[str, Any] = {
        "segment": page.segment,
        "purpose": purpose.value,
        "members": [m.customer_id for m in page.members],
        "next_cursor": page.next_cursor,
    }
    if identifiers is not Identifiers.NONE:
        body["records"] = [
            {"customer_id": m.customer_id, "entered_at": _timestamp(m.entered_at)}
            | member_fields(m, identifiers)
            for m in page.members
        ]
    return _json(body)


def _changes(
    runtime: Runtime, segment_key: str | None, purpose: Purpose, since: str | None, limit: int
) -> Response:
    page = runtime.service.changes(segment_key, purpose, since, limit)
    names = runtime.segment_names
    return _json(
        {
            "changes": [
                {
                    "id": c.id,
                    "customer_id": c.customer_id,
                    "event": c.event,
                    "segment": {
                        "id": c.segment_id,
                        "key": c.segment_key,
                        "name": names.get(c.segment_key, c.segment_key),
                    },
                    "model_version": c.model_version,
                    "confidence": c.confidence,
                    "at": _timestamp(c.occurred_at),
                    "cause": c.cause,
                }
                for c in page.changes
            ],
            "next_cursor": page.next_cursor,
            "has_more": page.has_more,
        }
    )


SinceQuery = Annotated[
    str | None,
    Query(max_length=64, description="the next_cursor of the previous page; omit to start"),
]
ChangesLimit = Annotated[int, Query(ge=1, le=10_000)]


@router.get(
    "/v1/changes",
    response_model=ChangesOut,
    tags=["audiences"],
)
def all_changes(
    runtime: RuntimeDep,
    purpose: AudiencePurpose,
    since: SinceQuery = None,
    limit: ChangesLimit = 1000,
) -> Response:
    """Every segment's entered/exited events for a purpose's audiences, in commit order. Poll
    with the last `next_cursor` to see each change exactly once, even while assignments are
    being written. Consent changes show as events with cause `consent`; erased customers'
    events are deleted with them."""
    return _changes(runtime, None, purpose, since, limit)


@router.get(
    "/v1/segments/{key}/changes",
    response_model=ChangesOut,
    tags=["audiences"],
)
def segment_changes(
    key: str,
    runtime: RuntimeDep,
    purpose: AudiencePurpose,
    since: SinceQuery = None,
    limit: ChangesLimit = 1000,
) -> Response:
    """One segment's entered/exited events in commit order (see GET /v1/changes)."""
    return _changes(runtime, key, purpose, since, limit)


def _model_out(manifest: dict[str, Any], registered: RegisteredModel | None) -> dict[str, object]:
    """A model's summary, from its manifest (as JSON) and its registry row (if registered)."""
    return {
        "version": manifest["version"],
        "kind": manifest["kind"],
        "active": registered is not None and registered.status == "active",
        "status": registered.status if registered is not None else "unregistered",
        "shadow": registered is not None and registered.shadow,
        "trained_at": manifest["trained_at"],
        "registered_at": registered.created_at if registered else None,
        "activated_at": registered.activated_at if registered else None,
        "retired_at": registered.retired_at if registered else None,
        "artifact_sha256": manifest["artifact_sha256"],
        "segments": len(manifest["segments"]),
        "silhouette": manifest["quality"]["silhouette"],
        "davies_bouldin": manifest["quality"]["davies_bouldin"],
    }


def _manifest_json(model: SegmentModel) -> dict[str, Any]:
    return cast(dict[str, Any], orjson.loads(model.manifest.model_dump_json()))


def _find_registered(runtime: Runtime, version: str) -> RegisteredModel | None:
    try:
        return runtime.registry.get(version)
    except ModelNotFound:
        return None


@router.get(
    "/v1/models",
    response_model=ModelsOut,
    tags=["models"],
    dependencies=[Depends(requires(Scope.READ))],
)
def models(runtime: RuntimeDep) -> ModelsOut:
    """Every registered model version with its status, and the one this process serves."""
    registered = runtime.service.store_call(runtime.registry.listed)
    return ModelsOut(
        models=[ModelOut.model_validate(_model_out(r.manifest, r)) for r in registered],
        active=next((r.version for r in registered if r.status == "active"), None),
        shadow=next((r.version for r in registered if r.shadow), None),
        served=runtime.model.version,
    )


@router.get(
    "/v1/models/active",
    response_model=ActiveModelOut,
    tags=["models"],
    dependencies=[Depends(requires(Scope.READ))],
)
def active_model(runtime: RuntimeDep) -> ActiveModelOut:
    """The model this process serves: its feature schema (names, types, ranges), segments and quality."""
    model = runtime.model
    manifest = _manifest_json(model)
    registered = _find_registered(runtime, model.version)
    return ActiveModelOut.model_validate(
        _model_out(manifest, registered)
        | {
            "features": manifest["features"],
            "k_search": manifest["quality"]["k_search"],
            "training_data": manifest["training_data"],
        }
    )


@router.get(
    "/v1/models/{version}",
    response_model=ModelDetailOut,
    tags=["models"],
    dependencies=[Depends(requires(Scope.READ))],
)
def model_detail(
    version: Annotated[str, Path(max_length=64)], runtime: RuntimeDep
) -> ModelDetailOut:
    """One registered version: schema, segments, quality and, if retrained, its lineage."""
    registered = runtime.registry.get(version)
    manifest = registered.manifest
    return ModelDetailOut.model_validate(
        _model_out(manifest, registered)
        | {
            "features": manifest["features"],
            "k_search": manifest["quality"]["k_search"],
            "training_data": manifest["training_data"],
            "segment_keys": [
                {"id": s["id"], "key": s["key"], "name": s["name"]}
                for s in sorted(manifest["segments"], key=lambda s: s["id"])
            ],
            "lineage": manifest.get("lineage"),
        }
    )


@router.get(
    "/v1/models/{version}/comparison",
    response_model=ComparisonOut,
    tags=["models"],
    dependencies=[Depends(requires(Scope.READ))],
)
def model_comparison(
    version: Annotated[str, Path(max_length=64)],
    runtime: RuntimeDep,
    sample: Annotated[int, Query(ge=100, le=MAX_COMPARISON_SAMPLE)] = DEFAULT_COMPARISON_SAMPLE,
) -> ComparisonOut:
    """What activating `version` would do to the stored customers: moves, agreement, profiles."""
    report = _comparison(runtime, version, sample)
    return ComparisonOut.model_validate(report.as_json())


@router.post(
    "/v1/models/{version}/activate",
    response_model=ActivationOut,
    tags=["models"],
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
    sample: Annotated[int, Query(ge=100, le=MAX_COMPARISON_SAMPLE)] = DEFAULT_COMPARISON_SAMPLE,
) -> ActivationOut:
    """Verify `version` and make it active everywhere without a restart (roll back by
    activating the previous one). This process switches at once, the others within seconds;
    requests in flight finish on the model they started with."""
    if min_agreement is not None:
        report = _comparison(runtime, version, sample)
        if report.agreement < min_agreement:
            raise ModelRefused(
                f"Not activated: only {report.agreement:.1%} of {report.customers} stored "
                f"customers would keep their segment, below the {min_agreement:.1%} asked; "
                f"see GET /v1/models/{version}/comparison.",
                f"agreement {report.agreement:.4f} < {min_agreement}",
                loc="min_agreement",
            )
    activation = runtime.service.store_call(
        lambda: runtime.registry.activate(version, allow_schema_change=allow_schema_change)
    )
    return _adopted(runtime, activation)


@router.post(
    "/v1/models/rollback",
    response_model=ActivationOut,
    tags=["models"],
    dependencies=[Depends(requires(Scope.ADMIN))],
)
def rollback_model(runtime: RuntimeDep) -> ActivationOut:
    """Activate the version that was active before the current one."""
    return _adopted(runtime, runtime.service.store_call(runtime.registry.rollback))


@router.post(
    "/v1/models/{version}/shadow",
    response_model=ShadowOut,
    tags=["models"],
    dependencies=[Depends(requires(Scope.ADMIN))],
)
def shadow_model(version: Annotated[str, Path(max_length=64)], runtime: RuntimeDep) -> ShadowOut:
    """Score every live assignment with `version` too, after the response; agreement with the
    active model is exported as segment_shadow_assignments_total / segment_shadow_agreements_total."""
    model = runtime.service.store_call(lambda: runtime.registry.set_shadow(version))
    runtime.watcher.adopt_shadow(model)
    return ShadowOut(shadow=version)


@router.delete(
    "/v1/models/shadow",
    response_model=ShadowOut,
    tags=["models"],
    dependencies=[Depends(requires(Scope.ADMIN))],
)
def stop_shadow(runtime: RuntimeDep) -> ShadowOut:
    """Stop shadow scoring."""
    runtime.service.store_call(lambda: runtime.registry.set_shadow(None))
    runtime.watcher.adopt_shadow(None)
    return ShadowOut(shadow=None)


def _adopted(runtime: Runtime, activation: Activation) -> ActivationOut:
    model = activation.model
    runtime.watcher.adopt(model)
    shadow = runtime.watcher.shadow.model
    if shadow is not None and shadow.version == model.version:
        runtime.watcher.adopt_shadow(None)  # activating the shadow ends its shadowing
    registered = runtime.registry.get(model.version)
    return ActivationOut(
        active=ModelOut.model_validate(_model_out(registered.manifest, registered)),
        previous=activation.previous,
    )


def _comparison(runtime: Runtime, version: str, sample: int) -> Comparison:
    def work() -> Comparison:
        candidate = runtime.registry.load(version)
        active = runtime.model
        features, skipped = stored_features(runtime.engine, [active, candidate], sample)
        return compare(active, candidate, features, skipped)

    try:
        return runtime.service.store_call(work)
    except OfflineInputError as exc:
        raise ModelRefused(
            f"Cannot compare with version {version}: {exc}.", str(exc), loc="customers"
        ) from exc
    except ArtifactError as exc:
        raise ModelRefused(
            f"Version {version} cannot be loaded: {exc}", "failed verification at load"
        ) from exc


@router.get("/healthz", tags=["operations"])
@router.head("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz", tags=["operations"], responses={503: {"description": "not ready, with the reason"}}
)
def readyz(runtime: RuntimeDep) -> OrjsonResponse:
    """Readiness: a model is loaded and the store answers; also says which version this
    process serves, which one the registry wants, and why they differ if a load failed."""
    reason = runtime.service.store_ready()
    if reason is not None:
        problem = error_body(
            "not_ready",
            "The service cannot store assignments right now; it retries by itself.",
            [Problem("store", reason)],
        )
        return OrjsonResponse(problem, status_code=503)
    watcher = runtime.watcher
    body: dict[str, object] = {
        "status": "ready",
        "model_version": runtime.model.version,
        "registry_active": watcher.registry_active,
    }
    if runtime.guard.open:
        body["authentication"] = (
            "DISABLED: no API keys are configured, every endpoint is open; set SEGMENTS_API_KEYS"
        )
    if watcher.load_error is not None:
        # still ready: the current model serves; the operator must see why it did not switch
        body["model_problem"] = watcher.load_error
    return OrjsonResponse(body)


@router.get("/metrics", tags=["operations"], response_class=Response)
def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus exposition (summed over all worker processes)."""
    return Response(
        exposition(runtime.live_registry), media_type="text/plain; version=0.0.4; charset=utf-8"
    )
