"""API keys with scopes, configured by their SHA-256 and checked without leaking timing.

A key is ``sk_`` plus 256 random bits. The service never holds a key in plain text: its
configuration lists one entry per key, ``name:sha256hex:scope+scope``, separated by newlines or
commas (blank lines and lines starting with # are ignored), e.g.::

    # name:sha256 of the key (64 hex):scopes
    ci:<64 hex>:assign+read
    crm:<64 hex>:audience
    google-ads:<64 hex>:advertising

`key_config_line` makes an entry to paste; `parse_key_config` reads them all into a `KeyRing`.

Scopes are listed explicitly on every key: `admin` does not imply the others, so a key can do
exactly what its entry says, and auditing a key means reading one line.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

KEY_PREFIX = "sk_"
_KEY_BYTES = 32
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
# names end up in logs and metric labels: short, and nothing that needs quoting
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENTRY_FORMAT = "name:sha256hex:scope+scope"
_NAME_RULE = (
    "names are 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit "
    f"(and not with {KEY_PREFIX!r}, which keys start with)"
)


class Scope(StrEnum):
    ASSIGN = "assign"  # score customers and store their assignments
    READ = "read"  # read stored assignments, segments and the model
    AUDIENCE = "audience"  # audiences and change feeds, for either consent purpose
    # an ad platform's key: audiences, change feeds and membership lookups, always for the
    # advertising purpose (customers who opted in), plus the segment catalogue
    ADVERTISING = "advertising"
    ADMIN = "admin"  # operate the service (models, keys); grants nothing else


@dataclass(frozen=True)
class ApiKey:
    """Who called (the configured name) and what they may do; holds no secret, so safe to log."""

    name: str
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class _Entry:
    key: ApiKey
    digest: bytes


class KeyRing:
    """The configured keys; `authenticate` finds which one (if any) a request presented."""

    def __init__(self, entries: Sequence[_Entry] = ()) -> None:
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        return [entry.key.name for entry in self._entries]

    def authenticate(self, presented_key: str) -> ApiKey | None:
        """The key's name and scopes, or None; takes the same time whichever entry matches."""
        digest = hashlib.sha256(presented_key.encode("utf-8")).digest()
        found: ApiKey | None = None
        # every entry is compared, with no early exit and no lookup keyed by the presented hash,
        # so response time says nothing about which key, or how much of a hash, matched
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.key
        return found


def generate_key() -> str:
    """A new random key (``sk_`` and 43 URL-safe characters); show it once, store its hash."""
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def hash_key(key: str) -> str:
    """Lower-case hex SHA-256 of a key: what the configuration holds instead of the key."""
    # a fast unsalted hash is right here, unlike for passwords: keys are 256 random bits, so
    # there is no dictionary to guess from and slowing each guess down buys nothing
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_config_line(name: str, key: str, scopes: Iterable[Scope]) -> str:
    """The configuration entry for `key`, to paste into the service's key settings."""
    if not _valid_name(name):
        raise ValueError(_NAME_RULE)
    chosen = frozenset(scopes)
    if not chosen:
        raise ValueError("a key needs at least one scope")
    if not key:
        raise ValueError("the key is empty")
    return f"{name}:{hash_key(key)}:{_scope_text(chosen)}"


def parse_key_config(text: str) -> KeyRing:
    """Every entry of a key configuration; ValueError naming the first bad entry."""
    entries: list[_Entry] = []
    positions_by_name: dict[str, int] = {}
    positions_by_digest: dict[bytes, int] = {}
    for position, raw in enumerate(_raw_entries(text), start=1):
        entry = _parse_entry(raw, position)
        name = entry.key.name
        if name in positions_by_name:
            raise ValueError(
                f"key entry {position} ({name!r}) repeats the name of entry "
                f"{positions_by_name[name]}; names must be unique"
            )
        if entry.digest in positions_by_digest:
            raise ValueError(
                f"key entry {position} ({name!r}) has the same hash as entry "
                f"{positions_by_digest[entry.digest]}; give each client its own key"
            )
        positions_by_name[name] = position
        positions_by_digest[entry.digest] = position
        entries.append(entry)
    return KeyRing(entries)


def parse_bearer(header_value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None if there is none."""
    if header_value is None:
        return None
    parts = header_value.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


def _raw_entries(text: str) -> list[str]:
    entries: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        entries.extend(part.strip() for part in line.split(",") if part.strip())
    return entries


def _parse_entry(raw: str, position: int) -> _Entry:
    # messages name an entry by position, plus its name once the name is known to be one:
    # a malformed entry may be a pasted key, so no part of it is echoed
    fields = raw.split(":")
    if len(fields) != 3:
        raise ValueError(
            f"key entry {position} has {len(fields)} ':'-separated fields; "
            f"each entry is {_ENTRY_FORMAT}"
        )
    name, digest, scopes = (field.strip() for field in fields)
    if not _valid_name(name):
        raise ValueError(f"key entry {position} has an invalid name: {_NAME_RULE}")
    where = f"key entry {position} ({name!r})"
    if not _HEX_DIGEST.match(digest):
        hint = " (it looks like the key itself)" if digest.startswith(KEY_PREFIX) else ""
        raise ValueError(
            f"{where}: the hash must be 64 hex characters, the SHA-256 that "
            f"key_config_line writes, not the key{hint}"
        )
    return _Entry(ApiKey(name, _parse_scopes(scopes, where)), bytes.fromhex(digest))


def _valid_name(name: str) -> bool:
    # a key pasted into the name field would otherwise be a valid name, and names get logged
    return bool(_NAME.match(name)) and not name.startswith(KEY_PREFIX)


def _parse_scopes(text: str, where: str) -> frozenset[Scope]:
    known = ", ".join(scope.value for scope in Scope)
    scopes: set[Scope] = set()
    for part in text.split("+"):
        word = part.strip()
        try:
            scopes.add(Scope(word))
        except ValueError:
            # short words are typos worth naming; anything else might be a misplaced secret
            shown = f" {word!r}" if word.isalpha() and len(word) <= 16 else ""
            raise ValueError(
                f"{where} has an unknown or empty scope{shown}; scopes are {known}"
            ) from None
    return frozenset(scopes)


def _scope_text(scopes: frozenset[Scope]) -> str:
    return "+".join(scope.value for scope in Scope if scope in scopes)
