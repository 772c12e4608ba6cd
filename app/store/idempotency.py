"""Idempotency keys in PostgreSQL (the `idempotency_keys` table, app.store.tables.IdempotencyKey).

A storing transaction claims its requests' keys first: an INSERT … ON CONFLICT DO NOTHING, so
a key committed before is not claimed, and a key another transaction is claiming right now
makes this one wait (the primary key's index) until that one commits (not claimed) or rolls
back (claimed). Whoever claims a key writes and records its answer in the same transaction;
the others read that answer. So a key is answered once across workers and replicas, and a
failed write leaves no key behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple, cast

import orjson
from sqlalchemy import Connection, Table, delete, select, text

from app.store.tables import IdempotencyKey

idempotency_keys = cast(Table, IdempotencyKey.__table__)


class KeyClaim(NamedTuple):
    key_hash: str
    body_sha256: str
    answer: str | None = None  # when known before the write (assignments): one statement less


class KeptAnswer(NamedTuple):
    body_sha256: str
    answer: str | None


def claim_keys(conn: Connection, claims: Sequence[KeyClaim], now: datetime) -> set[str]:
    """Claim the keys for this transaction; returns those it claimed (not kept before)."""
    rows = [c._asdict() for c in claims]
    claimed = conn.execute(
        _CLAIM, {"rows": orjson.dumps(rows).decode(), "now": now.isoformat()}
    ).scalars()
    return set(claimed)


# in key order: two transactions claiming overlapping keys wait for each other in one order,
# never in a cycle
_CLAIM = text(
    """
    INSERT INTO idempotency_keys (key_hash, body_sha256, answer, created_at)
    SELECT key_hash, body_sha256, answer, CAST(:now AS timestamptz)
    FROM json_to_recordset(CAST(:rows AS json))
        AS rows(key_hash varchar, body_sha256 varchar, answer text)
    ORDER BY key_hash
    ON CONFLICT (key_hash) DO NOTHING
    RETURNING key_hash
    """
)


def record_answers(conn: Connection, answers: Mapping[str, str]) -> None:
    """The answers of keys this transaction claimed without one (known only once written)."""
    rows = [{"key_hash": k, "answer": a} for k, a in answers.items()]
    conn.execute(_RECORD, {"rows": orjson.dumps(rows).decode()})


_RECORD = text(
    """
    UPDATE idempotency_keys SET answer = rows.answer
    FROM json_to_recordset(CAST(:rows AS json)) AS rows(key_hash varchar, answer text)
    WHERE idempotency_keys.key_hash = rows.key_hash
    """
)


def kept_answers(conn: Connection, key_hashes: Sequence[str]) -> dict[str, KeptAnswer]:
    """The kept body hash and answer of each of these keys that is kept."""
    query = select(
        idempotency_keys.c.key_hash, idempotency_keys.c.body_sha256, idempotency_keys.c.answer
    ).where(idempotency_keys.c.key_hash.in_(key_hashes))
    return {row[0]: KeptAnswer(row[1], row[2]) for row in conn.execute(query)}


def prune_keys(conn: Connection, now: datetime, hours: float) -> int:
    """Forget the keys older than `hours`; how many went."""
    before = now - timedelta(hours=hours)
    return conn.execute(
        delete(idempotency_keys).where(idempotency_keys.c.created_at < before)
    ).rowcount
