"""Erasure routes: erase one customer or up to 10,000, lift a tombstone, read the audit trail
(app.audience.erasure has the rules)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response, status
from starlette.concurrency import run_in_threadpool

from app.api.body import parse_json
from app.api.deps import (
    AdminKey,
    CustomerIdPath,
    RuntimeDep,
    json_response,
    utc_timestamp,
)
from app.api.openapi import ERROR_RESPONSES, error_responses, request_body_schema
from app.api.schemas import (
    AuditTrailOut,
    ErasureIn,
    ErasuresOut,
)
from app.auth.guard import requires
from app.auth.keys import Scope
from app.errors import InvalidFeatures, NothingErased, Problem
from app.scoring.validation import customer_id_problem

router = APIRouter(responses=ERROR_RESPONSES)


@router.delete(
    "/v1/customers/{customer_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["customers"],
    # customer_not_found: nothing was stored (a tombstone is recorded all the same)
    responses=error_responses("customer_not_found"),
)
def erase_customer(customer_id: CustomerIdPath, runtime: RuntimeDep, key: AdminKey) -> Response:
    """Erase everything stored about the customer: history, membership, hashed identifiers,
    consent, change events, purchase events and their aggregates. A tombstone (a keyed hash of
    the id) then keeps their later assignments and events from being stored, and an audit row
    records what went and which key asked."""
    (erasure,) = runtime.erasure.erase([customer_id], key.name)
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
    erasures = await run_in_threadpool(runtime.erasure.erase, ids, key.name)
    return json_response(
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
                    "purchase_events": e.purchase_events,
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
            f'The body must be {{"customer_ids": [...]}} with 1 to {MAX_ERASURES:,} ids; '
            "nothing was erased.",
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
    responses=error_responses("not_erased"),
)
def restore_customer(customer_id: CustomerIdPath, runtime: RuntimeDep, key: AdminKey) -> Response:
    """Lift the customer's erasure tombstone (e.g. they signed up again): assignments sent from
    now on are stored. Nothing erased comes back. Audited."""
    runtime.erasure.restore(customer_id, key.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/v1/customers/{customer_id}/erasures",
    response_model=AuditTrailOut,
    tags=["customers"],
    dependencies=[Depends(requires(Scope.ADMIN))],
)
def erasure_audit(customer_id: CustomerIdPath, runtime: RuntimeDep) -> Response:
    """The customer's erasure audit trail: each erasure and restore, what went, which key."""
    rows = runtime.erasure.audit(customer_id)
    return json_response(
        {
            "customer_id": customer_id,
            "erased": bool(rows) and rows[-1]["action"] == "erased",
            "audit": [
                {
                    "action": r["action"],
                    "assignments": r["assignments"],
                    "memberships": r["memberships"],
                    "events": r["events"],
                    "purchase_events": r["purchase_events"],
                    "api_key": r["api_key"],
                    "at": utc_timestamp(r["occurred_at"]),
                }
                for r in rows
            ],
        }
    )
