"""`POST /v1/events`: purchase events in, each customer's segment now out (app.service.events)."""

from __future__ import annotations

from json.encoder import encode_basestring as encode_json_string

from fastapi import APIRouter, Request, Response

from app.api.assignments import (
    BEARER_SECURITY,
    assignments_json,
    idempotency_from,
    keyed_response,
)
from app.api.body import parse_json
from app.api.openapi import (
    ERROR_RESPONSES,
    IDEMPOTENCY_PARAMETER,
    error_responses,
    request_body_schema,
)
from app.api.schemas import EventsIn, EventsOut
from app.auth.keys import Scope
from app.runtime import Runtime
from app.service.events import EventsOutcome, KeyedAnswer

router = APIRouter(responses=ERROR_RESPONSES)


@router.post(
    "/v1/events",
    response_model=EventsOut,
    tags=["events"],
    openapi_extra=request_body_schema(EventsIn, IDEMPOTENCY_PARAMETER) | BEARER_SECURITY,
    responses=error_responses("events_unsupported", "batch_too_large", "payload_too_large"),
)
async def ingest_events(request: Request) -> Response:
    """Store purchase events (one, or up to SEGMENTS_MAX_BATCH) and answer with each customer's
    segment, re-scored from all their purchases once committed. A repeated event id is
    acknowledged and ignored, so retries are safe; a batch with any invalid event stores nothing."""
    runtime: Runtime = request.state.runtime
    caller = runtime.guard.authorize(request, Scope.ASSIGN)
    raw = await request.body()
    names = runtime.models.segment_names

    def render(outcome: EventsOutcome) -> str:
        customers = assignments_json(outcome.assignments, names)
        unscored = ",".join(encode_json_string(c) for c in outcome.unscored)
        return (
            f'{{"model_version":{encode_json_string(outcome.model_version)},'
            f'"customers":[{customers}],'
            f'"events":{{"stored":{outcome.stored},"duplicate":{outcome.duplicate},'
            f'"suppressed":{outcome.suppressed}}},"unscored":[{unscored}]}}'
        )

    keyed = idempotency_from(request, caller.name, raw)
    result = await runtime.events.ingest(parse_json(raw), keyed, render)
    if isinstance(result, KeyedAnswer):
        return keyed_response(result.answer, result.replayed)
    return Response(render(result), media_type="application/json")
