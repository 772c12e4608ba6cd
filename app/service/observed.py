"""`observed_at`: the time the data of an assignment request describes, when the client knows it
(features computed from last night's warehouse, an order placed before a retry).

An assignment's `assigned_at` is its observation time (the time it was scored, without
`observed_at`), and a customer's current segment is the one with the latest `assigned_at`
(app.store.assignments). So an older observation arriving late goes to the history, in its
place, and never replaces a newer one: no spurious exited and entered events on the feed.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from datetime import datetime
from itertools import repeat
from typing import Any

from app.errors import Problem, Problems
from app.scoring.validation import all_dicts
from app.service.event_input import parse_moment

FIELD = "observed_at"


def split_observed(
    customers: Sequence[Any], prefix: str, now: datetime
) -> tuple[Sequence[Any], list[datetime | None] | None, Problems]:
    """The customers without `observed_at`, each one's observation time (None: now; the list is
    None when nobody sent one) and the problems with those sent."""
    sent = (
        any(map(operator.contains, customers, repeat(FIELD)))
        if all_dicts(customers)
        else any(FIELD in c for c in customers if type(c) is dict)
    )
    if not sent:
        return customers, None, Problems()  # the common case
    stripped: list[Any] = []
    observed: list[datetime | None] = []
    problems = Problems()
    for index, customer in enumerate(customers):
        if not isinstance(customer, Mapping) or FIELD not in customer:
            stripped.append(customer)
            observed.append(None)
            continue
        where = f"{prefix}[{index}].{FIELD}" if prefix else FIELD
        found: list[Problem] = []
        observed.append(parse_moment(customer[FIELD], where, now, found))
        problems.extend(found)
        stripped.append({k: v for k, v in customer.items() if k != FIELD})
    return stripped, observed, problems
