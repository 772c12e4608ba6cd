"""Reading a `POST /v1/events` body: every problem named by row and field, or the events as the
RFM rules see them (app.training.rfm) with each one's hashed identifiers and consent."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from app.audience.profile import CustomerProfile, split_profiles
from app.errors import BatchTooLarge, InvalidFeatures, Problem, Problems
from app.scoring.validation import canonical_id, customer_id_problem
from app.store.events import PurchaseRow
from app.store.tables import EventType
from app.training.rfm import exact_amount, is_purchase, order_key

FIELDS = frozenset(
    {"event_id", "customer_id", "occurred_at", "amount", "type", "order_id", "currency"}
)
PROFILE_FIELDS = frozenset({"email", "phone", "consent"})
# how far ahead of the service's clock an event may say it happened (clocks differ a little)
CLOCK_SKEW = timedelta(minutes=5)
MAX_OFFSET = timedelta(hours=15, minutes=59)
MAX_AMOUNT = 1e9
_ID = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]{1,128}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")


@dataclass(frozen=True)
class ParsedEvents:
    rows: list[PurchaseRow]
    profiles: list[CustomerProfile | None]  # the hashed identifiers and consent of each row


def parse_events(
    payload: Any,
    *,
    now: datetime,
    max_batch: int,
    currency: str | None,
    phone_region: str | None,
) -> ParsedEvents:
    """The body's events, or InvalidFeatures naming every problem (nothing is stored then)."""
    events = _events_of(payload)
    if len(events) > max_batch:
        raise BatchTooLarge(len(events), max_batch, "events")
    stripped, profiles, found_in_profiles = split_profiles(events, "events", phone_region)
    problems = Problems()
    problems += found_in_profiles
    rows: list[PurchaseRow] = []
    for index, event in enumerate(stripped):
        row, found = _row(event, f"events[{index}]", now, currency)
        problems += found
        if row is not None:
            rows.append(row)
    if problems:
        bad = len({p.loc.split("]")[0] for p in problems})
        counted = f"{bad}" if not problems.unlisted else f"{bad} or more"
        raise InvalidFeatures(
            f"{counted} of the {len(events)} events are invalid; nothing was stored. Fix the fields "
            "listed in details and resend.",
            problems,
        )
    return ParsedEvents(rows, list(profiles) if profiles is not None else [None] * len(rows))


def _events_of(payload: Any) -> list[Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        raise InvalidFeatures(
            'The body must be {"events": [...]}, a list of purchase events; see POST /v1/events '
            "in /docs.",
            [Problem("events", "is required: a list of events")],
        )
    extra = [key for key in payload if key != "events"]
    if extra:
        raise InvalidFeatures(
            "The body has fields other than events; remove them and resend.",
            [Problem(key, "is not a field of the body") for key in extra],
        )
    if not payload["events"]:
        raise InvalidFeatures(
            "The body has no events; send at least one.", [Problem("events", "is empty")]
        )
    return list(payload["events"])


def _row(
    event: Any, where: str, now: datetime, currency: str | None
) -> tuple[PurchaseRow | None, list[Problem]]:
    if not isinstance(event, Mapping):
        return None, [Problem(where, "must be an object: a purchase event")]
    problems = [
        Problem(f"{where}.{key}", "is not a field of an event")
        for key in event
        if key not in FIELDS | PROFILE_FIELDS
    ]

    def need(name: str, check: Any) -> Any:
        if event.get(name) is None:
            problems.append(Problem(f"{where}.{name}", "is required"))
            return None
        problem = check(event[name])
        if problem is not None:
            problems.append(Problem(f"{where}.{name}", problem))
            return None
        return event[name]

    event_id = need("event_id", _id_problem)
    customer_id = need("customer_id", customer_id_problem)
    if customer_id is not None:
        customer_id = canonical_id(customer_id)
    occurred_at = parse_moment(event.get("occurred_at"), f"{where}.occurred_at", now, problems)
    amount = need("amount", _amount_problem)
    kind = need("type", _type_problem)
    order = event.get("order_id")
    if order is not None and (problem := _id_problem(order)) is not None:
        problems.append(Problem(f"{where}.order_id", problem))
    sent_currency = event.get("currency")
    if sent_currency is not None:
        if not isinstance(sent_currency, str) or not _CURRENCY.fullmatch(sent_currency):
            problems.append(Problem(f"{where}.currency", "must be an ISO 4217 code, e.g. GBP"))
        elif currency is not None and sent_currency.upper() != currency:
            problems.append(
                Problem(
                    f"{where}.currency",
                    f"is {sent_currency.upper()}, but the model's spend is in {currency}: "
                    f"convert the amount to {currency} first",
                )
            )
    if problems or occurred_at is None:
        return None, problems
    return (
        PurchaseRow(
            event_id=event_id,
            customer_id=customer_id,
            occurred_at=occurred_at,
            amount=float(amount),
            type=EventType(kind),
            order_id=order,
            currency=sent_currency.upper() if sent_currency else None,
            counted=is_purchase(float(amount), order, kind),
            order_key=order_key(order, occurred_at),
            spend=exact_amount(amount),
        ),
        [],
    )


def parse_moment(value: Any, loc: str, now: datetime, problems: list[Problem]) -> datetime | None:
    """A time a client sends (an event's occurred_at, an assignment's observed_at): RFC 3339
    with a zone, not after `now` beyond CLOCK_SKEW; None, with the problem added, otherwise."""
    if value is None:
        problems.append(Problem(loc, "is required: an RFC 3339 time, e.g. 2026-11-23T09:00:00Z"))
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        problems.append(Problem(loc, "must be an RFC 3339 time, e.g. 2026-11-23T09:00:00Z"))
        return None
    if moment.tzinfo is None:
        problems.append(Problem(loc, "has no time zone: add Z (UTC) or an offset such as +01:00"))
        return None
    offset = moment.utcoffset()
    if offset is not None and abs(offset) > MAX_OFFSET:
        # RFC 3339 and Python allow up to ±23:59, PostgreSQL stores ±15:59; no zone uses more
        problems.append(Problem(loc, "has a UTC offset beyond ±15:59: send the time in UTC (Z)"))
        return None
    if moment > now + CLOCK_SKEW:
        problems.append(Problem(loc, "is in the future: send it once it happened"))
        return None
    return moment


def _id_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        return "must be a string of 1 to 128 characters with no control characters"
    return None


def _amount_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number (the order's value, in the model's currency)"
    if not math.isfinite(value) or abs(value) > MAX_AMOUNT:
        return f"must be a finite number between -{MAX_AMOUNT:g} and {MAX_AMOUNT:g}"
    return None


def _type_problem(value: Any) -> str | None:
    if not isinstance(value, str) or value not in {t.value for t in EventType}:
        return "must be order or return"
    return None
