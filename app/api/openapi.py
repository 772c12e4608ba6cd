"""The OpenAPI document: what FastAPI derives from the routes, completed with what it cannot see.

The hot routes read their bodies by hand (app.api.body), so FastAPI knows nothing of them: their
schemas are added to `components` here. Every error status an operation answers is declared on
the route with the codes it carries (`error_responses`), and `/openapi.json` is built on request
from the model the answering process serves (`for_model`): the `Features` schema lists that
model's features with their types and ranges, so a code generator and a fuzzer see the real
request, and the document changes when the served model does.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.api.schemas import TIME_PATTERN, BatchIn, CustomerIn, ErasureIn, ErrorOut, EventsIn
from app.scoring.manifest import FeatureSpec, Manifest
from app.scoring.validation import CATEGORY_MAX, CUSTOMER_ID_PATTERN, customer_id_schema_pattern

COMPONENTS = "#/components/schemas/"

# Every error code the service answers: its status, when, and where `details` point. Keep in step
# with app/errors.py and docs/api.md (tests/api/test_openapi.py compares them).
ERRORS: dict[str, tuple[int, str, str]] = {
    "unauthorized": (401, "no `Authorization: Bearer` header, or an unknown key", "authorization"),
    "forbidden": (403, "the key lacks the scope, or the purpose, this needs", "authorization"),
    "customer_not_found": (404, "nothing is stored for the customer", "customer_id"),
    "consent_withheld": (404, "the customer's consent does not allow the purpose", "customer_id"),
    "segment_not_found": (404, "the active model has no such segment key", "key"),
    "model_not_found": (404, "no such registered model version", "version"),
    "not_erased": (404, "no erasure tombstone stands for the customer", "customer_id"),
    "model_refused": (409, "the registry refused: verification, schema or agreement", "version"),
    "events_unsupported": (409, "the active model does not take RFM features", "events"),
    "batch_too_large": (413, "more than SEGMENTS_MAX_BATCH rows", "customers"),
    "payload_too_large": (413, "a body over SEGMENTS_MAX_BODY_BYTES", "body"),
    "invalid_input": (422, "invalid body, parameter or cursor: `details` name each", "features"),
    "idempotency_key_reused": (
        422,
        "the Idempotency-Key came before with another body",
        "Idempotency-Key",
    ),
    "too_many_exports": (429, "SEGMENTS_MAX_EXPORTS exports stream in this worker", "format"),
    "rate_limited": (429, "over the key's or the address's rate limit", "authorization"),
    "internal_error": (500, "a bug; never a stack trace", "body"),
    "store_unavailable": (503, "the database does not answer; nothing was stored", "store"),
    "not_ready": (503, "not ready: the store does not answer or is not migrated", "store"),
    "not_found": (404, "no such endpoint", "path"),
    "method_not_allowed": (405, "the endpoint does not take that method", "method"),
    "store_timeout": (503, "a statement ran past SEGMENTS_DB_STATEMENT_TIMEOUT_MS", "store"),
    "store_lock_timeout": (503, "a lock wait ran past SEGMENTS_DB_LOCK_TIMEOUT_MS", "store"),
    "store_busy": (503, "no pooled connection came free within SEGMENTS_DB_POOL_TIMEOUT", "store"),
    "busy": (503, "this worker runs SEGMENTS_COMPARISONS_PER_WORKER comparisons", "comparisons"),
    # answered by the connection guard (app.api.connections), before any operation is known
    "malformed_request": (400, "the HTTP parser could not read the request", "request"),
    "request_timeout": (408, "the request's headers did not arrive in time", "headers"),
    "too_many_connections": (503, "the worker holds its most connections", "connections"),
}
# what every /v1 operation can answer: a request the HTTP parser refuses (a URL too long), a key
# problem, invalid input, a body over the size limit (the limit applies to every request), a
# store that fails it, and a rate limit
COMMON = (
    "malformed_request",
    "unauthorized",
    "forbidden",
    "invalid_input",
    "payload_too_large",
    "store_unavailable",
    "store_timeout",
    "store_lock_timeout",
    "store_busy",
    "rate_limited",
)
RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these error codes: one per status, naming its codes, with an
    example body of each."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERRORS[code][0], []).append(code)
    return {
        status: {
            "model": ErrorOut,
            "description": "; ".join(f"`{code}`: {ERRORS[code][1]}" for code in listed),
            "content": {
                "application/json": {
                    "examples": {code: {"value": _example_error(code)} for code in listed}
                }
            },
        }
        # every 503 of a /v1 operation, and a rate limit's 429, say when to retry; /readyz's
        # 503 is for probes
        | (
            {"headers": RETRY_AFTER}
            if (status == 503 and listed != ["not_ready"]) or "rate_limited" in listed
            else {}
        )
        for status, listed in sorted(by_status.items())
    }


def _example_error(code: str) -> dict[str, Any]:
    _, when, loc = ERRORS[code]
    message = when[0].upper() + when[1:].replace("`", "") + "."
    return {"error": {"code": code, "message": message, "details": [{"loc": loc, "problem": when}]}}


ERROR_RESPONSES = error_responses(*COMMON)

# the bodies the routes read themselves, documented with pydantic models that never parse them
REQUEST_MODELS: tuple[type[BaseModel], ...] = (CustomerIn, BatchIn, EventsIn, ErasureIn)


IDEMPOTENCY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
    "description": "one key per logical request (a UUID), the same on each retry: a retry with "
    "the same body answers the first answer and stores nothing; another body is a 422 "
    "idempotency_key_reused",
}


def request_body_schema(
    model: type[BaseModel], *parameters: dict[str, Any], example: Any = None
) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body (and these query parameters) itself:
    a reference to the model's schema in `components` (added by `complete`)."""
    content: dict[str, Any] = {"schema": {"$ref": COMPONENTS + model.__name__}}
    if example is not None:
        content["example"] = example
    extra: dict[str, Any] = {
        "requestBody": {"required": True, "content": {"application/json": content}}
    }
    if parameters:
        extra["parameters"] = list(parameters)
    return extra


# before a model is known (FastAPI's app.openapi()): any feature, numbers or category strings
GENERIC_FEATURES: dict[str, Any] = {
    "type": "object",
    "description": "the model's features by name; GET /v1/models/active lists names, types "
    "and ranges, and /openapi.json of a running service lists them here",
    "additionalProperties": {"anyOf": [{"type": "number"}, {"type": "string"}]},
}


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add what FastAPI cannot derive: the hand-read bodies' schemas, the generic `Features`,
    the exact customer id rule and the error codes. In place; idempotent."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    _, top = models_json_schema(
        [(model, "validation") for model in REQUEST_MODELS], ref_template=COMPONENTS + "{model}"
    )
    for name, schema in top["$defs"].items():
        schemas.setdefault(name, schema)
    schemas["CustomerIn"]["properties"]["features"] = {"$ref": COMPONENTS + "Features"}
    # optional, but a string when sent: null is refused like any other non-time
    observed = schemas["CustomerIn"]["properties"]["observed_at"]
    observed.pop("anyOf", None)
    observed.pop("default", None)
    observed |= {"type": "string", "format": "date-time", "pattern": TIME_PATTERN}
    schemas.setdefault("Features", copy.deepcopy(GENERIC_FEATURES))
    schemas["ErrorDetailOut"]["properties"]["code"]["description"] = (
        "what went wrong, in snake_case; the service answers these (more may come, so treat an "
        "unknown one by its status): "
        + "; ".join(f"`{code}` ({status}): {when}" for code, (status, when, _) in ERRORS.items())
    )
    _replace_patterns(document, CUSTOMER_ID_PATTERN, customer_id_schema_pattern())
    return document


def _replace_patterns(node: Any, old: str, new: str) -> None:
    """Every `pattern` equal to `old` becomes `new` (the customer id's, wherever it appears)."""
    if isinstance(node, dict):
        if node.get("pattern") == old:
            node["pattern"] = new
        for value in node.values():
            _replace_patterns(value, old, new)
    elif isinstance(node, list):
        for value in node:
            _replace_patterns(value, old, new)


def for_model(document: dict[str, Any], manifest: Manifest) -> dict[str, Any]:
    """A copy of the completed document whose `Features` is this model's, with examples."""
    document = copy.deepcopy(document)
    features = {spec.name: _feature_schema(spec) for spec in manifest.features}
    example = {spec.name: _feature_example(spec, manifest) for spec in manifest.features}
    document["components"]["schemas"]["Features"] = {
        "type": "object",
        "description": f"the features of model {manifest.version}, the one this service "
        "serves: each one required, no others (GET /v1/models/active describes them)",
        "properties": features,
        "required": list(features),
        "additionalProperties": False,
        "examples": [example],
    }
    currency = manifest.training_data.currency
    if currency:  # events in another currency are refused; the case of the code is not
        event = document["components"]["schemas"]["EventIn"]["properties"]["currency"]
        pattern = "".join(f"[{c.upper()}{c.lower()}]" for c in currency)
        event["anyOf"] = [{"type": "string", "pattern": f"^{pattern}$"}, {"type": "null"}]
        event["description"] = f"the model's, {currency}, if sent"
    customer = {"customer_id": "12347", "features": example}
    examples = {
        ("/v1/assignments", "post"): customer,
        ("/v1/assignments/batch", "post"): {
            "customers": [
                customer | {"email": "Jane.Doe@example.com", "consent": {"advertising": True}},
                {"customer_id": "12350", "features": example},
            ]
        },
    }
    for (path, method), body in examples.items():
        operation = document["paths"].get(path, {}).get(method)
        if operation is not None:
            operation["requestBody"]["content"]["application/json"]["example"] = body
    return document


def _feature_schema(spec: FeatureSpec) -> dict[str, Any]:
    if spec.type == "category":
        return {
            "type": "string",
            "minLength": 1,
            "maxLength": CATEGORY_MAX,
            "pattern": r"\S",
            "description": "a category; unknown ones are accepted (scored as none of the known: "
            + ", ".join((spec.categories or [])[:20])
            + ")",
            "examples": (spec.categories or [])[:3],
        }
    schema: dict[str, Any] = {
        "type": spec.type,
        "minimum": spec.minimum,
        "maximum": spec.maximum,
    }
    if spec.description:
        schema["description"] = spec.description
    return schema


def _feature_example(spec: FeatureSpec, manifest: Manifest) -> float | int | str:
    """A plausible value: the first segment's training median (within range), else the minimum."""
    if spec.type == "category":
        return (spec.categories or ["unknown"])[0]
    assert spec.minimum is not None
    assert spec.maximum is not None
    profiles = [
        s.numeric_profile[spec.name] for s in manifest.segments if spec.name in s.numeric_profile
    ]
    value = profiles[0].median if profiles else spec.minimum
    value = min(max(value, spec.minimum), spec.maximum)
    return round(value) if spec.type == "integer" else round(value, 2)
