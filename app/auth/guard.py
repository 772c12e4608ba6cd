"""Who may call what: the API key in `Authorization: Bearer <key>` and the scope a route needs.

`/healthz`, `/readyz`, `/metrics` and the docs stay open (probes and Prometheus carry no keys).
Without configured keys the service is open, which only the embedded quick start does by
default; a deployment must configure keys or say SEGMENTS_ALLOW_ANONYMOUS=true, and either way
an open service says so at start-up and in /readyz.

Neither the presented key nor its hash ever reaches a log line or an error body. Every refusal
is logged (a warning: reason, the key's name if known, the client address) and counted in
segment_auth_failures_total. The guard also holds the per-key limit and the per-address limit
on failed authentications (app.ratelimit): an address past the latter is answered 429 before
its key is looked at, so guessing keys goes no faster than the limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.audience.consent import Purpose
from app.auth.keys import ApiKey, KeyRing, Scope, parse_bearer
from app.errors import Forbidden, PurposeForbidden, RateLimited, Unauthorized
from app.metrics.registry import AUTH_FAILURES, RATE_LIMITED
from app.ratelimit import RateLimits, retry_after

log = logging.getLogger(__name__)

# documents the scheme in OpenAPI; the check itself is `Guard.authorize`
BEARER = HTTPBearer(auto_error=False, description="an API key: `segments keys create`")
ANONYMOUS = ApiKey("anonymous", frozenset(Scope))


class Guard:
    def __init__(self, keys: KeyRing, limits: RateLimits | None = None) -> None:
        self.keys = keys
        self.limits = limits or RateLimits()

    @classmethod
    def open_to_all(cls, limits: RateLimits | None = None) -> Guard:
        return cls(KeyRing(), limits)

    @property
    def open(self) -> bool:
        return len(self.keys) == 0

    def authorize(self, request: Request, scope: Scope, also: Scope | None = None) -> ApiKey:
        """The caller's key if it has `scope` (or `also`); 401 without a known key, 403 naming
        `scope` without either, 429 past the key's rate or its address's failed attempts."""
        if self.open:
            request.state.key_name = ANONYMOUS.name
            return ANONYMOUS
        address = request.client.host if request.client else "unknown"
        failures = self.limits.auth_failures
        if failures is not None and (wait := failures.wait(address)) > 0:
            RATE_LIMITED.labels("auth_failures").inc()
            raise RateLimited("auth_failures", retry_after(wait))
        presented = parse_bearer(request.headers.get("authorization"))
        key = None if presented is None else self.keys.authenticate(presented)
        if key is None:
            reason = "missing" if presented is None else "unknown"
            refused(reason, None, address)
            if failures is not None:
                failures.take(address)
            raise Unauthorized(reason)
        request.state.key_name = key.name
        per_key = self.limits.per_key
        if per_key is not None and (wait := per_key.take(key.name)) > 0:
            RATE_LIMITED.labels("key").inc()
            raise RateLimited("key", retry_after(wait), key.name)
        if not key.allows(scope) and (also is None or not key.allows(also)):
            refused("scope", key.name, address)
            raise Forbidden(key.name, scope.value)
        return key


def refused(reason: str, key_name: str | None, address: str) -> None:
    """Log and count a request authentication refused (never the key it presented)."""
    AUTH_FAILURES.labels(reason).inc()
    log.warning(
        "authentication failed: %s",
        reason,
        extra={"fields": {"reason": reason, "key": key_name, "address": address}},
    )


def requires(
    scope: Scope, also: Scope | None = None
) -> Callable[[Request, HTTPAuthorizationCredentials | None], Coroutine[Any, Any, ApiKey]]:
    """A route dependency: the request needs a key with `scope` (or `also`)."""

    # each operation names the scopes it takes in OpenAPI (see `scope_alternatives`)
    bearer = Security(BEARER, scopes=[scope.value] + ([also.value] if also is not None else []))

    async def check(
        request: Request,
        # a default, not Annotated: these annotations are strings, and `bearer` is a local
        _: HTTPAuthorizationCredentials | None = bearer,
    ) -> ApiKey:
        # async: a plain def dependency would cost a hop to the thread pool
        guard: Guard = request.state.runtime.guard
        return guard.authorize(request, scope, also)

    check.__name__ = f"requires_{scope.value}"
    return check


PurposeQuery = Annotated[
    Purpose | None,
    Query(
        description="whose consent to honour: personalization (everyone but customers who "
        "objected; the default) or advertising (only customers who opted in; the only one, "
        "and the default, for a key with just the advertising scope)"
    ),
]


def purpose_for(
    scope: Scope,
) -> Callable[
    [Request, Purpose | None, HTTPAuthorizationCredentials | None], Coroutine[Any, Any, Purpose]
]:
    """A route dependency for a route that serves customers under a consent purpose: a key with
    `scope` may ask for either (personalization by default); a key with only the advertising
    scope is held to advertising, so an ad platform's key can never read customers who did
    not opt in, whatever it asks for."""

    bearer = Security(BEARER, scopes=[scope.value, Scope.ADVERTISING.value])

    async def check(
        request: Request,
        purpose: PurposeQuery = None,
        _: HTTPAuthorizationCredentials | None = bearer,
    ) -> Purpose:
        guard: Guard = request.state.runtime.guard
        key = guard.authorize(request, scope, Scope.ADVERTISING)
        if key.allows(scope):
            return purpose or Purpose.PERSONALIZATION
        if purpose is Purpose.PERSONALIZATION:
            refused("purpose", key.name, request.client.host if request.client else "unknown")
            raise PurposeForbidden(key.name, scope.value)
        return Purpose.ADVERTISING

    check.__name__ = f"purpose_for_{scope.value}"
    return check


def scope_alternatives(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI 3.1 reads the roles listed in one security requirement as all needed, and the
    requirements of an operation's `security` array as alternatives. A route takes any one of
    its scopes, so `[{"HTTPBearer": ["audience", "advertising"]}]` as FastAPI writes it becomes
    `[{"HTTPBearer": ["audience"]}, {"HTTPBearer": ["advertising"]}]`. In place; idempotent."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            requirements = operation.get("security") if isinstance(operation, dict) else None
            if requirements:
                operation["security"] = [
                    {scheme: [role]} if roles else {scheme: []}
                    for requirement in requirements
                    for scheme, roles in requirement.items()
                    for role in roles or [None]
                ]
    return schema
