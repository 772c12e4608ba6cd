"""The consent purposes, and why their rules are what they are.

A customer's consent travels with their assignments as two flags, each true, false or never sent
(NULL). The rules, the same for lookups, paged and streamed exports, the change feed and erasure
notices, are computed by the database itself: the memberships' generated columns `advertising`
and `personalization` (app/store/tables.py) hold them, and every reader reads those.

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
