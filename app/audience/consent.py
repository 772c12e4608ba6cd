"""The consent rules: which customers an audience may show, for which purpose.

A customer's consent travels with their assignments as two flags, each true, false or never sent
(NULL). The rules, the same for lookups, paged and streamed exports and the change feed:

- advertising: only customers who said `advertising: true`. Never sent counts as no: uploading a
  customer to an ad platform needs an opt-in (GDPR Art. 6(1)(a), ePrivacy).
- personalization: everyone except customers who said `personalization: false`. Tailoring our
  own shop to a customer is what the service is for, so it needs no opt-in, but it honours an
  objection (GDPR Art. 21).

A flag that is not sent keeps the value sent before, so a client that sends consent once need not
repeat it with every assignment.
"""

from __future__ import annotations

from enum import StrEnum


class Purpose(StrEnum):
    ADVERTISING = "advertising"
    PERSONALIZATION = "personalization"


def allows(purpose: Purpose, consent: bool | None) -> bool:
    """Whether a customer whose flag for `purpose` is `consent` belongs in its audiences."""
    if purpose is Purpose.ADVERTISING:
        return consent is True
    return consent is not False
