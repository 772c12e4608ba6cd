"""Expected failures as types: what went wrong, for whom, and what to do about it.

Knows nothing of HTTP frameworks: app/api/errors.py renders these in the contract's error body,
and the CLI prints their message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one request value: where (`customers[3].features.monetary`) and what."""

    loc: str
    problem: str


# One answer lists at most this many problems and counts the rest: a body with a million bad
# fields must not become a million objects and a 100 MB answer (issue 13)
MAX_PROBLEMS = 100
# a location names fields the caller wrote; longer ones are cut, never echoed whole
MAX_LOC = 200


class Problems(list[Problem]):
    """Problems as they are found: the first MAX_PROBLEMS kept, the others only counted."""

    def __init__(self) -> None:
        super().__init__()
        self.unlisted = 0

    def append(self, problem: Problem) -> None:
        if len(self) < MAX_PROBLEMS:
            super().append(problem)
        else:
            self.unlisted += 1

    def extend(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            self.append(problem)
        self.unlisted += getattr(problems, "unlisted", 0)

    def __iadd__(self, problems: Iterable[Problem]) -> Problems:  # type: ignore[override,misc]
        self.extend(problems)
        return self

    @property
    def total(self) -> int:
        return len(self) + self.unlisted


@dataclass
class AppError(Exception):
    """A failure the client can act on: rendered as {"error": {code, message, details}}."""

    message: str
    details: Sequence[Problem] = ()
    status: int = 400
    code: str = "bad_request"
    retry_after: int | None = None  # seconds, sent as Retry-After (a 503 that will pass)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


class InvalidFeatures(AppError):
    def __init__(self, message: str, details: Sequence[Problem]) -> None:
        super().__init__(message, details, 422, "invalid_input")


class BatchTooLarge(AppError):
    def __init__(self, rows: int, limit: int, field: str = "customers") -> None:
        super().__init__(
            f"The batch has {rows} {field}; send at most {limit} per request (split it).",
            [Problem(field, f"has {rows} items, more than {limit}")],
            413,
            "batch_too_large",
        )


class BodyTooLarge(AppError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request body is larger than {limit} bytes; send smaller batches.",
            [Problem("body", f"exceeds {limit} bytes")],
            413,
            "payload_too_large",
        )


class CustomerNotFound(AppError):
    def __init__(self, customer_id: str) -> None:
        super().__init__(
            "No assignment is stored for this customer; assign it first with POST /v1/assignments.",
            [Problem("customer_id", f"{customer_id!r} is unknown")],
            404,
            "customer_not_found",
        )


class ConsentWithheld(AppError):
    def __init__(self, customer_id: str, purpose: str, consent: bool | None) -> None:
        said = (
            f"objected to {purpose} (consent.{purpose} is false)"
            if consent is False
            else f"has not opted in to {purpose} (consent.{purpose} was never sent true)"
        )
        super().__init__(
            f"The customer {said}, so their segment is not served for it; it is once an "
            f"assignment sends consent.{purpose} true.",
            [Problem("customer_id", f"{customer_id!r} withheld {purpose} consent")],
            404,
            "consent_withheld",
        )


class TooManyExports(AppError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"{limit} audience exports are streaming already; retry in a minute, or page the "
            "audience as JSON meanwhile.",
            [Problem("format", f"at most {limit} streamed exports at once (SEGMENTS_MAX_EXPORTS)")],
            429,
            "too_many_exports",
        )


class NothingErased(AppError):
    def __init__(self, customer_id: str, already_erased: bool) -> None:
        tombstone = (
            "A tombstone already stood for them."
            if already_erased
            else "A tombstone now stands, so their assignments will not be stored "
            "(POST /v1/customers/{id}/restore lifts it)."
        )
        super().__init__(
            f"Nothing was stored for this customer. {tombstone}",
            [Problem("customer_id", f"{customer_id!r} had nothing stored")],
            404,
            "customer_not_found",
        )


class NotErased(AppError):
    def __init__(self, customer_id: str) -> None:
        super().__init__(
            "No erasure tombstone stands for this customer, so there is nothing to restore.",
            [Problem("customer_id", f"{customer_id!r} is not erased")],
            404,
            "not_erased",
        )


class SegmentNotFound(AppError):
    def __init__(self, key: str, known: Iterable[str]) -> None:
        super().__init__(
            f"The active model has no segment {key!r}; GET /v1/segments lists the keys.",
            [Problem("key", f"is not one of {', '.join(known)}")],
            404,
            "segment_not_found",
        )


class InvalidCursor(AppError):
    def __init__(self, parameter: str = "cursor") -> None:
        super().__init__(
            f"The {parameter} cursor is not one this service issued; start again without it.",
            [Problem(parameter, "is malformed")],
            422,
            "invalid_input",
        )


class InvalidBody(AppError):
    def __init__(self, problem: str) -> None:
        super().__init__(
            "The request body is not valid JSON; send a JSON object as the API docs show.",
            [Problem("body", problem)],
            422,
            "invalid_input",
        )


class EventsUnsupported(AppError):
    def __init__(self, version: str) -> None:
        super().__init__(
            f"The active model {version} is not an RFM model: it takes features purchase events "
            "cannot give. Send its features with POST /v1/assignments instead, or activate an "
            "RFM model (segments train transactions).",
            [Problem("events", f"model {version} does not take recency, frequency and monetary")],
            409,
            "events_unsupported",
        )


class StoreReason(StrEnum):
    """Why the store failed a request: the code a client sees and the metric's `reason`."""

    UNAVAILABLE = "unavailable"  # refused, unreachable, or the connection died
    TIMEOUT = "timeout"  # a statement ran past SEGMENTS_DB_STATEMENT_TIMEOUT_MS
    LOCK = "lock"  # waited for a lock past SEGMENTS_DB_LOCK_TIMEOUT_MS (or a deadlock)
    BUSY = "busy"  # every pooled connection in use for SEGMENTS_DB_POOL_TIMEOUT seconds


_STORE_PROBLEMS = {
    StoreReason.UNAVAILABLE: (
        "store_unavailable",
        "The assignment store is unavailable",
        "the database does not answer (connection refused or timed out)",
    ),
    StoreReason.TIMEOUT: (
        "store_timeout",
        "The database did not finish this request within its statement timeout",
        "a statement ran longer than SEGMENTS_DB_STATEMENT_TIMEOUT_MS",
    ),
    StoreReason.LOCK: (
        "store_lock_timeout",
        "The database could not take a lock this request needs in time (other writes held it)",
        "waited longer than SEGMENTS_DB_LOCK_TIMEOUT_MS for a lock",
    ),
    StoreReason.BUSY: (
        "store_busy",
        "Every database connection of this worker is in use",
        "no pooled connection came free within SEGMENTS_DB_POOL_TIMEOUT",
    ),
}


class StoreFailed(AppError):
    """The database could not do the request: down, too slow, locked or saturated (`reason`).
    Each has its own code, so a client, a dashboard and an alert can tell them apart."""

    def __init__(self, reason: StoreReason, *, writing: bool) -> None:
        code, what, problem = _STORE_PROBLEMS[reason]
        ask_less = reason is StoreReason.TIMEOUT
        if writing:
            message = f"{what} and nothing was stored; retry shortly" + (
                ", or send smaller batches" if ask_less else ""
            )
            message += ", or score without storing (?persist=false)."
        else:
            message = f"{what}; retry shortly" + (
                " or ask for less (a smaller sample or page)." if ask_less else "."
            )
        super().__init__(message, [Problem("store", problem)], 503, code, retry_after=1)
        self.reason = reason


class Busy(AppError):
    """A heavy read refused because this worker already runs as many as it may at once."""

    def __init__(self, what: str, limit: int, setting: str) -> None:
        super().__init__(
            f"This worker is already running {limit} {what}; retry in a few seconds.",
            [Problem(what, f"at most {limit} at once per worker ({setting})")],
            503,
            "busy",
            retry_after=5,
        )


class ModelNotFound(AppError):
    def __init__(self, version: str) -> None:
        super().__init__(
            f"No model version {version!r} is registered; GET /v1/models lists them, and "
            "`segments models register DIR` adds one.",
            [Problem("version", f"{version!r} is not registered")],
            404,
            "model_not_found",
        )


class ModelRefused(AppError):
    """The registry will not do what was asked with this model: said why, nothing changed."""

    def __init__(self, message: str, problem: str, loc: str = "version") -> None:
        super().__init__(message, [Problem(loc, problem)], 409, "model_refused")


class Unauthorized(AppError):
    def __init__(self, why: str) -> None:
        problem = {
            "missing": "no `Authorization: Bearer <key>` header",
            "unknown": "the key is not one this service knows",
        }[why]
        super().__init__(
            "Send a valid API key as `Authorization: Bearer <key>`; ask the operator for one "
            "(`segments keys create`).",
            [Problem("authorization", problem)],
            401,
            "unauthorized",
        )


class Forbidden(AppError):
    def __init__(self, key_name: str, scope: str) -> None:
        super().__init__(
            f"The API key {key_name!r} lacks the {scope!r} scope this endpoint needs; use a key "
            "that has it.",
            [Problem("authorization", f"key {key_name!r} has no scope {scope!r}")],
            403,
            "forbidden",
        )


class PurposeForbidden(AppError):
    def __init__(self, key_name: str, scope: str) -> None:
        super().__init__(
            f"The API key {key_name!r} reads advertising audiences only; ask for "
            f"purpose=advertising, or use a key with the {scope!r} scope.",
            [Problem("purpose", f"key {key_name!r} has the advertising scope, not {scope!r}")],
            403,
            "forbidden",
        )


def error_body(code: str, message: str, details: Iterable[Problem] = ()) -> dict[str, Any]:
    """The contract's error body: at most MAX_PROBLEMS details, then one saying how many more."""
    listed: list[dict[str, str]] = []
    unlisted = getattr(details, "unlisted", 0)
    for detail in details:
        if len(listed) == MAX_PROBLEMS:
            unlisted += 1
            continue
        loc = detail.loc if len(detail.loc) <= MAX_LOC else detail.loc[:MAX_LOC] + "…"
        listed.append({"loc": loc, "problem": detail.problem})
    if unlisted:
        listed.append(
            {
                "loc": "body",
                "problem": f"and {unlisted:,} more problems not listed: fix the ones above, "
                "they are likely the same kind, and send it again",
            }
        )
    return {"error": {"code": code, "message": message, "details": listed}}
