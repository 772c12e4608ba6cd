"""Naming erased customers without keeping their ids: a keyed hash (HMAC-SHA256).

Tombstones and audit rows hold `IdHasher(key)(customer_id)`. Without the key nobody can test a
candidate id against them, so the tables carry no personal data; with it the service recognises
a returning id. Changing the key orphans every tombstone (erased customers could be stored
again), so it is set once per deployment, like a database password.
"""

from __future__ import annotations

import hmac


class IdHasher:
    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("the erasure key is empty")
        self._key = key.encode()

    def __call__(self, customer_id: str) -> str:
        return hmac.digest(self._key, customer_id.encode(), "sha256").hex()
