"""What an assignment may carry besides features: e-mail, phone and consent.

The raw e-mail address and phone number never leave this module: they are normalised and hashed
here (app/audience/identifiers.py) and only the hashes travel on. A bad value is reported by
field and row, never repeated.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from app.audience.consent import Purpose
from app.audience.identifiers import IdentifierError, email_sha256, phone_hashes
from app.errors import Problem, Problems
from app.scoring.validation import all_dicts

PROFILE_FIELDS = frozenset({"email", "phone", "consent"})
CUSTOMER_FIELDS = frozenset({"customer_id", "features"})
PURPOSES = frozenset(p.value for p in Purpose)


@dataclass(frozen=True)
class CustomerProfile:
    """Hashed identifiers and consent sent with one assignment; None where nothing was sent."""

    email_sha256: str | None = None
    phone_sha256: str | None = None  # E.164 with its "+": Google Customer Match
    phone_digits_sha256: str | None = None  # E.164 digits only: Meta
    consent_personalization: bool | None = None
    consent_advertising: bool | None = None

    def merged_over(self, earlier: CustomerProfile | None) -> CustomerProfile:
        """This profile, with what `earlier` sent where this one sent nothing."""
        if earlier is None:
            return self
        merged: dict[str, Any] = {
            name: mine if mine is not None else theirs
            for name, mine, theirs in zip(
                PROFILE_COLUMNS, self.values(), earlier.values(), strict=True
            )
        }
        return CustomerProfile(**merged)

    def consent_for(self, purpose: Purpose) -> bool | None:
        if purpose is Purpose.ADVERTISING:
            return self.consent_advertising
        return self.consent_personalization

    def values(self) -> tuple[str | bool | None, ...]:
        return (
            self.email_sha256,
            self.phone_sha256,
            self.phone_digits_sha256,
            self.consent_personalization,
            self.consent_advertising,
        )


PROFILE_COLUMNS = (
    "email_sha256",
    "phone_sha256",
    "phone_digits_sha256",
    "consent_personalization",
    "consent_advertising",
)


def split_profiles(
    customers: Sequence[Any], prefix: str, default_region: str | None
) -> tuple[list[Any], list[CustomerProfile | None] | None, list[Problem]]:
    """The customers without their profile fields (for feature validation), each one's profile
    (None when no customer sent any), and every problem with those fields."""
    if all_dicts(customers) and all(
        map(operator.le, map(dict.keys, customers), repeat(CUSTOMER_FIELDS))
    ):
        return list(customers), None, []  # the common case: features only
    stripped: list[Any] = []
    profiles: list[CustomerProfile | None] = []
    problems = Problems()
    for i, customer in enumerate(customers):
        if not isinstance(customer, Mapping) or not customer.keys() & PROFILE_FIELDS:
            stripped.append(customer)
            profiles.append(None)
            continue
        where = f"{prefix}[{i}]." if prefix else ""
        stripped.append({k: v for k, v in customer.items() if k not in PROFILE_FIELDS})
        profile, found = _profile(customer, where, default_region)
        profiles.append(profile)
        problems.extend(found)
    return stripped, profiles, problems


def _profile(
    customer: Mapping[str, Any], where: str, default_region: str | None
) -> tuple[CustomerProfile, list[Problem]]:
    problems: list[Problem] = []
    email = phone = phone_digits = None
    if customer.get("email") is not None:
        raw = customer["email"]
        if not isinstance(raw, str):
            problems.append(Problem(f"{where}email", "must be a string (an e-mail address)"))
        else:
            try:
                email = email_sha256(raw)
            except IdentifierError as exc:
                problems.append(Problem(f"{where}email", exc.problem))
    if customer.get("phone") is not None:
        raw = customer["phone"]
        if not isinstance(raw, str):
            problems.append(Problem(f"{where}phone", "must be a string (a phone number)"))
        else:
            try:
                phone, phone_digits = phone_hashes(raw, default_region)
            except IdentifierError as exc:
                problems.append(Problem(f"{where}phone", exc.problem))
    consent: dict[str, bool | None] = {}
    raw_consent = customer.get("consent")
    if raw_consent is not None:
        if not isinstance(raw_consent, Mapping):
            problems.append(
                Problem(
                    f"{where}consent",
                    'must be an object like {"personalization": true, "advertising": false}',
                )
            )
        else:
            for name, flag in raw_consent.items():
                if name not in PURPOSES:
                    # the unknown name is not repeated: a client could have put anything there
                    problems.append(
                        Problem(
                            f"{where}consent",
                            "has a flag other than personalization and advertising; send only those",
                        )
                    )
                elif flag is not None and not isinstance(flag, bool):
                    problems.append(
                        Problem(f"{where}consent.{name}", "must be true, false or null")
                    )
                else:
                    consent[name] = flag
    return (
        CustomerProfile(
            email,
            phone,
            phone_digits,
            consent.get(Purpose.PERSONALIZATION),
            consent.get(Purpose.ADVERTISING),
        ),
        problems,
    )
