"""Normalising and hashing customer e-mail addresses and phone numbers for audience uploads.

Google Customer Match and Meta custom audiences both match on the lower-case hex SHA-256 of a
normalised identifier, so the normalisation must be exactly what they do on their side:

- E-mail: trim surrounding whitespace and lower-case; both platforms hash that one string.
  No Gmail-specific rewriting (dropping dots or +tags): Google's Customer Match guide says removing
  the dots before gmail.com/googlemail.com is not required, Meta's own example hashes
  ``john_smith@gmail.com`` as written, and rewriting only for Google would give the two platforms
  different hashes of the same person. (Only Campaign Manager 360's enhanced conversions asks for
  the dots removed; that is not an audience upload.)
- Phone: parsed and validated with `phonenumbers`, then formatted as E.164. The platforms differ
  here: Google hashes E.164 with its plus (``+16505551212``), Meta hashes digits only with the
  country code (``16505551212``). `phone_hashes` gives both.

Raw identifiers are personal data: `IdentifierError` says what is wrong without ever repeating the
value, so it can be logged and returned to clients as it is.
"""

from __future__ import annotations

import hashlib

import phonenumbers

EMAIL_MAX = 254  # RFC 5321's limit on a forward path, which is what mail servers enforce
EMAIL_LOCAL_MAX = 64
# phonenumbers gives up past 250 characters; nothing that long is a phone number anyway
PHONE_INPUT_MAX = 64


class IdentifierError(ValueError):
    """An identifier that cannot be normalised: which field, and what is wrong (never the value)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def normalise_email(raw: str) -> str:
    """The address trimmed and lower-cased, after checking that it is a plausible e-mail address."""
    email = raw.strip().lower()
    problem = _email_problem(email)
    if problem:
        raise IdentifierError("email", problem)
    return email


def _email_problem(email: str) -> str | None:
    if not email:
        return "is empty"
    if len(email) > EMAIL_MAX:
        return f"is longer than {EMAIL_MAX} characters"
    if any(c.isspace() or not c.isprintable() for c in email):
        return "contains spaces or control characters"
    if email.count("@") != 1:
        return "must contain exactly one @"
    local, domain = email.split("@")
    if not local:
        return "has nothing before the @"
    if len(local) > EMAIL_LOCAL_MAX:
        return f"has more than {EMAIL_LOCAL_MAX} characters before the @"
    if "." not in domain or not all(domain.split(".")):
        return "must have a domain with a dot after the @, like example.com"
    return None


def normalise_phone(raw: str, default_region: str | None = None) -> str:
    """The number in E.164 (``+442079460958``); without a leading + it needs `default_region`."""
    text = raw.strip()
    region = _region(default_region)
    if not text:
        raise IdentifierError("phone", "is empty")
    if len(text) > PHONE_INPUT_MAX:
        raise IdentifierError("phone", f"is longer than {PHONE_INPUT_MAX} characters")
    if not text.startswith("+") and region is None:
        raise IdentifierError(
            "phone", "has no country code: start it with + or give a default region"
        )
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        # `from None`: the parser's exception is harmless today, but the chain is where a raw
        # value would end up in a logged traceback if it ever carried one
        raise IdentifierError("phone", "is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise IdentifierError("phone", "is not a valid phone number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _region(default_region: str | None) -> str | None:
    if not default_region:
        return None
    region = default_region.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise IdentifierError(
            "default_region", "is not a region code phonenumbers knows (two letters, like GB or US)"
        )
    return region


def sha256_hex(normalised: str) -> str:
    """Lower-case hex SHA-256 of an already normalised identifier (UTF-8, no salt)."""
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def email_sha256(raw: str) -> str:
    """The hash both Google and Meta match e-mail addresses on."""
    return sha256_hex(normalise_email(raw))


def phone_hashes(raw: str, default_region: str | None = None) -> tuple[str, str]:
    """The hashes the platforms match phone numbers on: Google Customer Match's of E.164 with
    its leading + (``+16505551212``), and Meta's of the digits alone (``16505551212``)."""
    e164 = normalise_phone(raw, default_region)
    return sha256_hex(e164), sha256_hex(e164.removeprefix("+"))
