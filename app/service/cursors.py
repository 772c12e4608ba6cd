"""Opaque paging cursors: a kind prefix (m1 audience members, e1 change events) and the last
position, base64url. The prefix keeps one kind of cursor from being used for the other."""

from __future__ import annotations

import base64
import binascii

from app.errors import InvalidCursor
from app.scoring.validation import customer_id_problem

MEMBERS_CURSOR = "m1:"
CHANGES_CURSOR = "e1:"


def members_cursor(customer_id: str) -> str:
    """The audience-page cursor that continues after `customer_id`."""
    return _encode(MEMBERS_CURSOR, customer_id)


def feed_cursor(event_id: int) -> str:
    """The change-feed cursor that continues after event `event_id`."""
    return _encode(CHANGES_CURSOR, str(event_id))


def decode_members_cursor(cursor: str) -> str:
    customer_id = _decode(MEMBERS_CURSOR, cursor, "cursor")
    if customer_id_problem(customer_id):
        raise InvalidCursor()
    return customer_id


def decode_feed_cursor(cursor: str) -> int:
    event_id = _decode(CHANGES_CURSOR, cursor, "since")
    # ASCII digits only ("²" is a digit to str.isdigit) and within the id column's bigint
    if not (event_id.isascii() and event_id.isdigit()) or int(event_id) >= 2**63:
        raise InvalidCursor("since")
    return int(event_id)


def _encode(kind: str, position: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}{position}".encode()).decode().rstrip("=")


def _decode(kind: str, cursor: str, parameter: str) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor(parameter) from exc
    if not text.startswith(kind):
        raise InvalidCursor(parameter)
    return text[len(kind) :]
