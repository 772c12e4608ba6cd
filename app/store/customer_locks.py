"""The locks that put one customer's writes in order, across every worker and replica.

Two transactions writing the same customer (an assignment, an event, the refresher, an erasure)
must not interleave: the membership merge computes each move from the membership it finds, and
an erasure must either see a write committed or have the write see its tombstone. Each writer
therefore takes, before it merges, a transaction-scoped advisory lock on each of its customers'
*buckets* (a hash of the id, one of BUCKETS) and holds them to its commit. Writers of different
customers mostly take different buckets and run side by side; a batch of thousands takes every
bucket, as the fleet's one lock was taken by every write before.

Buckets rather than one lock per customer: a transaction may hold at most a few thousand locks
(PostgreSQL's shared lock table is max_locks_per_transaction x max_connections, 6,400 by
default), and a batch names up to 10,000 customers. Buckets are taken in ascending order, in one
statement, so two writers can never wait for each other in a circle; every writer takes its
customers' row locks (customer_activity) before its buckets, never after.

Functions take a Connection inside the caller's transaction and never commit themselves.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, TextClause, text

BUCKETS = 256
# Any constant: the first key of the two-key advisory locks, so buckets 0-255 cannot collide
# with another lock of this database (the registry's lock is a one-key lock: another key space).
_NAMESPACE = 729_110

_LOCK_BUCKETS = text(
    # unnest hands the (ascending) buckets over in array order: the locks are taken in that order
    "SELECT pg_advisory_xact_lock(:namespace, bucket) "
    "FROM unnest(CAST(:buckets AS integer[])) AS bucket"
)


def bucket_of(customer_id: str) -> int:
    """The customer's lock bucket: the same in every process (crc32, not Python's salted hash)."""
    return zlib.crc32(customer_id.encode()) % BUCKETS


def lock_statement(customer_ids: Iterable[str]) -> tuple[TextClause, dict[str, Any]]:
    """The statement (and its parameters) that locks the customers' buckets, for a pipeline."""
    buckets = sorted({bucket_of(customer_id) for customer_id in customer_ids})
    return _LOCK_BUCKETS, {"namespace": _NAMESPACE, "buckets": buckets}


def lock_customers(conn: Connection, customer_ids: Iterable[str]) -> None:
    """Hold the customers' buckets until the transaction ends."""
    statement, parameters = lock_statement(customer_ids)
    conn.execute(statement, parameters)


def lock_every_customer(conn: Connection) -> None:
    """Hold every bucket: no customer is written by anyone else until the transaction ends."""
    conn.execute(_LOCK_BUCKETS, {"namespace": _NAMESPACE, "buckets": list(range(BUCKETS))})
