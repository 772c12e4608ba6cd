"""What routes share: the lifespan's runtime, the caller's key and purpose, path parameters,
and the JSON helpers every module of app/api answers with."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, cast

import orjson
from fastapi import Depends, Path, Request, Response

from app.audience.consent import Purpose
from app.auth.guard import purpose_for, requires
from app.auth.keys import ApiKey, Scope
from app.runtime import Runtime
from app.scoring.validation import CUSTOMER_ID_PATTERN


async def _runtime(request: Request) -> Runtime:
    # async: FastAPI would run a plain `def` dependency in the thread pool, a hop per request
    return cast(Runtime, request.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
AdminKey = Annotated[ApiKey, Depends(requires(Scope.ADMIN))]  # the key's name goes to the audit
# the consent purpose a route serves, checked against the caller's key (app.auth.guard)
AudiencePurpose = Annotated[Purpose, Depends(purpose_for(Scope.AUDIENCE))]
LookupPurpose = Annotated[Purpose, Depends(purpose_for(Scope.READ))]
CustomerIdPath = Annotated[str, Path(pattern=CUSTOMER_ID_PATTERN, max_length=128)]


def json_response(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def utc_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a Z, e.g. 2026-11-23T09:00:00.123456Z."""
    # stored values come back in the database session's zone: always answer in UTC
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
