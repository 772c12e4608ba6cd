"""Audience routes for ad platforms and CRM syncs: a segment's members (paged or streamed) and
the change feeds, each under a consent purpose."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import (
    AudiencePurpose,
    RuntimeDep,
    json_response,
    utc_timestamp,
)
from app.api.exports import FEED_CURSOR_HEADER, negotiate, stream_audience
from app.api.openapi import ERROR_RESPONSES, error_responses
from app.api.schemas import ChangesOut, MembersOut
from app.audience.consent import Purpose
from app.audience.formats import (
    IDENTIFIERS_NEED_ADVERTISING,
    ExportFormat,
    Identifiers,
    identifiers_allowed,
    member_fields,
)
from app.errors import InvalidFeatures, Problem
from app.runtime import Runtime

router = APIRouter(responses=ERROR_RESPONSES)


@router.get(
    "/v1/segments/{key}/members",
    response_model=MembersOut,
    tags=["segments", "audiences"],
    responses={
        **error_responses("segment_not_found", "too_many_exports"),
        200: {
            # OpenAPI 3.1's Media Type Object has no description: it goes in the schema
            "content": {
                "application/x-ndjson": {
                    "schema": {
                        "type": "string",
                        "description": "the whole audience, one JSON object per line",
                    }
                },
                "text/csv": {
                    "schema": {
                        "type": "string",
                        "description": "the whole audience, with a header row",
                    }
                },
            },
            "headers": {
                FEED_CURSOR_HEADER: {
                    "description": "streamed exports: the change-feed cursor of the export's "
                    "snapshot; follow GET /v1/changes?since= from it",
                    "schema": {"type": "string"},
                }
            },
        },
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
        Query(
            description="add email_sha256 and phone_sha256 in Google's or Meta's format; "
            "only with purpose=advertising"
        ),
    ] = Identifiers.NONE,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    cursor: Annotated[
        str | None,
        Query(
            max_length=1024,
            description="the next_cursor of the previous page (only cursors the service issued)",
        ),
    ] = None,
) -> Response:
    """The purpose's audience of segment `key`: customers whose current segment it is and whose
    consent allows the purpose, in customer-id order. Paged JSON (follow `next_cursor`), or the
    whole audience streamed as NDJSON or CSV from one snapshot."""
    if not identifiers_allowed(identifiers, purpose):
        raise InvalidFeatures(
            "Hashed identifiers come only with the advertising audience; add "
            "purpose=advertising or leave identifiers out.",
            [Problem("identifiers", IDENTIFIERS_NEED_ADVERTISING)],
        )
    export_format = negotiate(format, request.headers.get("accept"))
    if export_format is not ExportFormat.JSON:
        return await stream_audience(runtime.audiences, key, purpose, export_format, identifiers)
    with_records = identifiers is not Identifiers.NONE
    page = await run_in_threadpool(
        partial(runtime.audiences.members, records=with_records), key, purpose, cursor, limit
    )
    # a page holds up to 10,000 ids: orjson straight from the list, not a model per response
    body: dict[str, Any] = {
        "segment": page.segment,
        "purpose": purpose.value,
        "members": page.member_ids,
        "next_cursor": page.next_cursor,
    }
    if page.records is not None:
        body["records"] = [
            {"customer_id": m.customer_id, "entered_at": utc_timestamp(m.entered_at)}
            | member_fields(m, identifiers)
            for m in page.records
        ]
    return json_response(body)


def _changes(
    runtime: Runtime, segment_key: str | None, purpose: Purpose, since: str | None, limit: int
) -> Response:
    page = runtime.audiences.changes(segment_key, purpose, since, limit)
    names = runtime.models.segment_names
    return json_response(
        {
            "purpose": purpose.value,
            "changes": [
                {
                    "id": c.id,
                    "customer_id": c.customer_id,
                    "event": c.event,
                    "segment": {
                        "id": c.segment_id,
                        "key": c.segment_key,
                        "name": names.name(c.model_version, c.segment_key),
                    },
                    "model_version": c.model_version,
                    "confidence": c.confidence,
                    "at": utc_timestamp(c.occurred_at),
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
    Query(
        # an export's position names its snapshot's running transactions (app.service.cursors)
        max_length=8192,
        description="the next_cursor of the previous page (only cursors the service issued); "
        "omit to start",
    ),
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
    """Every segment's entered/exited events for a purpose's audiences, each customer's in the
    order they happened. Poll with the last `next_cursor` to see each change exactly once, even
    while assignments are being written on many replicas. Consent changes show as events with
    cause `consent`. An erased customer's events are deleted with them, and one `exited` event
    with cause `erasure` tells followers to drop them."""
    return _changes(runtime, None, purpose, since, limit)


@router.get(
    "/v1/segments/{key}/changes",
    response_model=ChangesOut,
    tags=["audiences"],
    responses=error_responses("segment_not_found"),
)
def segment_changes(
    key: str,
    runtime: RuntimeDep,
    purpose: AudiencePurpose,
    since: SinceQuery = None,
    limit: ChangesLimit = 1000,
) -> Response:
    """One segment's entered/exited events (see GET /v1/changes)."""
    return _changes(runtime, key, purpose, since, limit)
