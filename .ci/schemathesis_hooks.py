"""Schemathesis hooks for .ci/fuzz-api: the five request rules the OpenAPI document states in
words because JSON Schema cannot, applied to positive cases only (negative ones stay as drawn).

- A phone number must be a valid number for its country (phonenumbers): a drawn string of
  digits seldom is, so positive cases send a real one.
- An event's or an observation's time may not be more than 5 minutes ahead of the service's
  clock: drawn times from the future move to the past.
- Paging cursors are opaque and only the service issues them: positive cases leave them out.
- Hashed identifiers (`identifiers=google|meta`) come only with `purpose=advertising`.
- An Idempotency-Key names one logical request: a drawn key reused with another body is a 422
  (as it should be), so positive cases send a new key each.

Everything else in a positive case is as drawn, and must be accepted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import schemathesis

VALID_PHONE = "+44 20 7946 0958"
PAST = "2026-01-01T00:00:00Z"
CURSORS = ("cursor", "since")


def _adapt(value: Any) -> Any:
    if isinstance(value, list):
        return [_adapt(item) for item in value]
    if not isinstance(value, dict):
        return value
    adapted = {key: _adapt(item) for key, item in value.items()}
    if isinstance(adapted.get("phone"), str):
        adapted["phone"] = VALID_PHONE
    for field in ("occurred_at", "observed_at"):
        moment = adapted.get(field)
        if isinstance(moment, str):
            try:
                when = datetime.fromisoformat(moment)
            except ValueError:
                when = None
            if when is not None and when.tzinfo is not None and when > datetime.now(UTC):
                adapted[field] = PAST
    return adapted


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: Any) -> Any:
    if case.meta is None or case.meta.generation.mode is not schemathesis.GenerationMode.POSITIVE:
        return case
    if case.body is not None:
        case.body = _adapt(case.body)
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = str(uuid4())
    if case.query:
        for name in CURSORS:
            case.query.pop(name, None)
        if case.query.get("identifiers", "none") != "none":
            case.query["purpose"] = "advertising"
    return case
