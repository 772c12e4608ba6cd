"""PostgreSQL transaction ids (`xid8`), which order the change feed without a lock.

Every feed event carries its writing transaction's id (`tx`) and a *stamp*: the larger of that
id and the newest id that had ended when the event was written (its statement's snapshot's
xmax - 1), taken once the writer holds its customers' locks. A reader hands out only events
whose stamp is below the oldest transaction still running (its snapshot's xmin), in (stamp, id)
order:

- nothing is missed: an event that commits later belongs to a transaction running now or later,
  whose id, and so its stamp, is at least that xmin: above every stamp handed out so far;
- one customer's events keep their commit order: a second writer of the customer gets its locks
  only once the first has ended, so its stamp is at least the first one's id and never below
  the first one's stamp (ties go by id, handed out later);
- none waits for nothing: once its transaction and every older one have ended, the oldest
  running (or, with none, the next id) is above the newest ended id, so above the stamp. (The
  snapshot's xmax itself would not be: a write that waited for its locks while others ended,
  then was the last to end, would wait for the next write anywhere.)

The price: an event waits for every older transaction of the database to end, so a long one (a
bulk ingest) holds the feed back while it runs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Text, TypeDecorator, cast, func, text, type_coerce
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.types import UserDefinedType

_CURRENT_ID = "pg_current_xact_id()"
# the column defaults (app.store.tables.MembershipEvent), evaluated by each event's INSERT
TX_DEFAULT = text(_CURRENT_ID)
# xid8 has no arithmetic: xmax - 1 goes through bigint (ids stay far below 2**63)
_NEWEST_ENDED = (
    "CAST(CAST(CAST(CAST(pg_snapshot_xmax(pg_current_snapshot()) AS text) AS bigint) - 1 "
    "AS text) AS xid8)"
)
STAMP_DEFAULT = text(f"greatest({_CURRENT_ID}, {_NEWEST_ENDED})")


class _Xid8(UserDefinedType[Any]):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


# reflection (Alembic's check of the migrations against the models) knows the type by this name
ischema_names["xid8"] = _Xid8


class TransactionId(TypeDecorator[int]):
    """An `xid8` column, read and bound as a Python int (psycopg has no adapter for xid8: it
    goes through text both ways)."""

    impl = _Xid8
    cache_ok = True

    def bind_expression(self, bindvalue: Any) -> ColumnElement[Any]:
        return cast(type_coerce(bindvalue, Text), _Xid8())

    def column_expression(self, column: Any) -> ColumnElement[Any]:
        return type_coerce(cast(column, Text), self)

    def process_bind_param(self, value: int | None, dialect: Any) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Any) -> int | None:
        return None if value is None else int(value)


def oldest_running() -> ColumnElement[int]:
    """The oldest transaction still running, as the statement's snapshot sees it (its xmin)."""
    return type_coerce(func.pg_snapshot_xmin(func.pg_current_snapshot()), TransactionId())


def current_snapshot() -> ColumnElement[str]:
    """The statement's snapshot, as text (xmin:xmax:running ids)."""
    return cast(func.pg_current_snapshot(), Text)
