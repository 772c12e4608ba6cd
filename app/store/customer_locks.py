"""The locks that put one customer's writes in order, across every worker and replica.

Two transactions writing the same customer (an assignment, an event, the refresher, an erasure)
must not interleave: the membership merge computes each move from the membership it finds, and
an erasure must either see a write committed or have the write see its tombstone. So every
writer, before it merges, takes transaction-scoped advisory locks held to its commit:

- a write of at most FEW customers (single requests committed together, small batches) takes
  the *fleet lock* shared and one lock per customer (by a 32-bit hash of the id) exclusively:
  writers of different customers never wait for each other;
- a write of more customers (a batch of thousands, a refresher's chunk, a bulk erasure) takes
  the fleet lock exclusively instead: it waits for the small writes under way and holds the
  others back while it merges, as the one lock every write took before issue 14 did.

Why not one lock per customer for all: a transaction may hold only so many locks (PostgreSQL's
shared lock table has max_locks_per_transaction x max_connections entries, 6,400 by default) and
a batch names up to 10,000 customers. Why not a few hundred buckets: a commit group of 30
customers then shares a bucket with nearly every other group (measured: 7-14% of statements
waiting with two replicas).

Order, so that no two writers wait for each other in a circle: the fleet lock first, then the
customers' in ascending order, all in one statement; every writer takes its customers' row
locks (customer_activity) before these, never after; and a transaction that locks twice locks
the larger set first (a shared fleet lock is never raised to exclusive).

Functions take a Connection inside the caller's transaction and never commit themselves.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, TextClause, text

FEW = 256  # the most customers a write locks one by one
# Any constants: the first keys of the two-key advisory locks (the registry's lock is a one-key
# lock: another key space)
_FLEET = 729_110
_CUSTOMER = 729_111

_LOCK_FEW = text(
    # one statement, in order: UNION ALL runs its branches in turn, unnest hands the ascending
    # keys over in array order
    """
    SELECT count(*) FROM (
        SELECT CAST(pg_advisory_xact_lock_shared(:fleet, 0) AS text)
        UNION ALL
        SELECT CAST(pg_advisory_xact_lock(:customer, key) AS text)
        FROM unnest(CAST(:keys AS integer[])) AS key
    ) AS taken
    """
)
_LOCK_FLEET = text("SELECT pg_advisory_xact_lock(:fleet, 0)")


def customer_key(customer_id: str) -> int:
    """The customer's lock key: the same in every process (crc32, not Python's salted hash), as
    the signed 32-bit integer the lock functions take."""
    key = zlib.crc32(customer_id.encode())
    return key - 2**32 if key >= 2**31 else key


def lock_statement(customer_ids: Collection[str]) -> tuple[TextClause, dict[str, Any]]:
    """The statement (and its parameters) that locks the customers, for a pipeline."""
    distinct = set(customer_ids)
    if len(distinct) > FEW:
        return _LOCK_FLEET, {"fleet": _FLEET}
    keys = sorted({customer_key(customer_id) for customer_id in distinct})
    return _LOCK_FEW, {"fleet": _FLEET, "customer": _CUSTOMER, "keys": keys}


def lock_customers(conn: Connection, customer_ids: Collection[str]) -> None:
    """Hold the customers until the transaction ends: nobody else writes them meanwhile."""
    statement, parameters = lock_statement(customer_ids)
    conn.execute(statement, parameters)
