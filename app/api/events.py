"""`POST /v1/events`: purchase events in, each customer's segment now out (app.service.events)."""

from __future__ import annotations

from json.encoder import encode_basestring as encode_json_string

from fastapi import APIRouter, Request, Response

from app.api.assignments import BEARER_SECURITY, assignments_json
from app.api.body import parse_json
from app.api.openapi import ERROR_RESPONSES, error_responses, request_body_schema
from app.api.schemas import EventsIn, EventsOut
from app.auth.keys import Scope
from app.runtime import Runtime

router = APIRouter(responses=ERROR_RESPONSES)


@router.post(
    "/v1/events",
    response_model=EventsOut,
    tags=["events"],
    openapi_extra=request_body_schema(EventsIn) | BEARER_SECURITY,
    responses=error_responses("events_unsupported", "batch_too_large", "payload_too_large"),
)
async def ingest_events(request: Request) -> Response:
    """Store purchase events (one, or up to SEGMENTS_MAX_BATCH) and answer with each customer's
    segment, re-scored from all their purchases once committed. A repeated event id is
    acknowledged and ignored, so retries are safe; a batch with any invalid event stores nothing."""
    runtime: Runtime = request.state.runtime
    runtime.guard.authorize(request, Scope.ASSIGN)
    outcome = await runtime.events.ingest(parse_json(await request.body()))
    customers = ",".join(assignments_json(outcome.assignments, runtime.models.segment_names))
    unscored = ",".join(encode_json_string(c) for c in outcome.unscored)
    body = (
        f'{{"model_version":{encode_json_string(outcome.model_version)},'
        f'"customers":[{customers}],'
        f'"events":{{"stored":{outcome.stored},"duplicate":{outcome.duplicate},'
        f'"suppressed":{outcome.suppressed}}},"unscored":[{unscored}]}}'
    )
    return Response(body, media_type="application/json")
